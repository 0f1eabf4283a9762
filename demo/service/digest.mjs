#!/usr/bin/env node
// The demo's backend job, standing for an edge worker or a nightly cron job: with a
// service token (its `role` claim is "service"), it reads every team board through
// GraphQL, across partitions (the schema's rules let a service read every board;
// browsers read only their own), and posts a digest task on each board through the
// function `postDigest`. The boards' members see the digest appear live in the demo.
//
//   WARREN_URL=http://127.0.0.1:7070 \
//   WARREN_TOKEN=$(./target/release/warren token --data-dir warren-data \
//     --sub digest-bot --claim role=service) \
//   node demo/service/digest.mjs
//
// Run it again the same day and nothing is posted twice: each board's digest is sent
// with an Idempotency-Key naming the board and the day (docs/GRAPHQL.md).

import { GraphQLClient, gql } from "graphql-request";

const TEAMS = gql`
  query Teams($after: String) {
    Team_all(first: 100, after: $after) {
      nodes { id _fields }
      pageInfo { hasNextPage endCursor }
    }
  }
`;

const TASKS = gql`
  query Tasks($team: JSON!, $after: String) {
    Task_byTeam(team: $team, first: 100, after: $after) {
      nodes { id _fields }
      pageInfo { hasNextPage endCursor }
    }
  }
`;

const POST = gql`
  mutation Post($team: JSON!, $title: JSON!) {
    postDigest(team: $team, title: $title)
  }
`;

/** Every node of a connection, page by page. */
async function* all(client, query, field, variables = {}) {
  let after = null;
  do {
    const page = (await client.request(query, { ...variables, after }))[field];
    yield* page.nodes;
    after = page.pageInfo.hasNextPage ? page.pageInfo.endCursor : null;
  } while (after);
}

/** Posts today's digest on every board; returns what it posted, by board name. */
export async function digest({ url, token, day = new Date().toISOString().slice(0, 10) }) {
  const client = new GraphQLClient(new URL("/v1/graphql", url).href, {
    headers: { authorization: `Bearer ${token}` },
  });
  const posted = {};
  for await (const team of all(client, TEAMS, "Team_all")) {
    const open = [];
    for await (const task of all(client, TASKS, "Task_byTeam", { team: team.id })) {
      if (!task._fields.done && !task._fields.digest) open.push(task._fields.title);
    }
    let title = open.length
      ? `Digest ${day}: ${open.length} open: ${open.join(", ")}`
      : `Digest ${day}: nothing open`;
    if (title.length > 200) title = `${title.slice(0, 197)}...`;
    await client.request(POST, { team: team.id, title }, { "Idempotency-Key": `digest:${team.id}:${day}` });
    posted[team._fields.name] = title;
  }
  return posted;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const token = process.env.WARREN_TOKEN;
  if (!token) {
    console.error("WARREN_TOKEN is required: a service token (see the top of this file)");
    process.exit(2);
  }
  try {
    const posted = await digest({ url: process.env.WARREN_URL ?? "http://127.0.0.1:7070", token });
    for (const [board, title] of Object.entries(posted)) console.log(`${board}: ${title}`);
    console.log(`digests posted on ${Object.keys(posted).length} boards`);
  } catch (e) {
    // graphql-request puts the server's errors (with their codes) on the exception.
    const errors = e.response?.errors;
    console.error(errors ? errors.map((x) => `${x.extensions?.code}: ${x.message}`).join("\n") : e.message);
    process.exit(1);
  }
}
