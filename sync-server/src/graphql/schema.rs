//! The GraphQL schema, generated from a Warren schema.
//!
//! | Warren | GraphQL |
//! |---|---|
//! | `collection Todo` | `type Todo { id: ID!, _fields: JSON!, _partition: String!, _version: Long!, ...fields }`, `TodoConnection`, `TodoEdge` |
//! | `Todo.byId(id)` | `Query.Todo_byId(id: ID!): Todo` |
//! | `Todo.all()` | `Query.Todo_all(first, after, order): TodoConnection!` |
//! | `index byOwner [owner, created]` | `Query.Todo_byOwner(owner: JSON, created: JSON, range: IndexRange, order, first, after): TodoConnection!` |
//! | `function toggle(id)` | `Mutation.toggle(id: JSON): JSON` |
//! | each read above | the same field on `Subscription`, as a live query |
//!
//! A document's GraphQL fields are its `id`, the system fields, and the fields the
//! collection's indexes name; `_fields` holds all of them as JSON. Field, argument and
//! result types come from [`field_type`], [`param_type`] and [`result_type`]: `JSON`
//! for every field while Warren schemas have no types, and the place where typed
//! fields will map theirs. `docs/GRAPHQL.md` has the whole mapping.

use std::collections::BTreeSet;
use std::sync::Arc;

use async_graphql::dynamic::{
    Enum, Field, FieldFuture, FieldValue, InputObject, InputValue, Object, ResolverContext, Scalar,
    Schema, Subscription, SubscriptionField, SubscriptionFieldFuture, TypeRef,
};
use async_graphql::extensions::{Extension, ExtensionContext, ExtensionFactory, NextValidation};
use async_graphql::{ServerError, ValidationResult, Value as Gql};
use warren_core::schema::Collection;
use warren_core::Value;

use super::exec::{self, Doc, Edge, Page};
use super::program::{self, Args, Read, DEFAULT_PAGE, MAX_PAGE};
use super::{codes, engine_error, error, Caller, Service};
use crate::gateway;
use crate::limits::Budget;

/// The JSON scalar: any JSON value.
pub const JSON: &str = "JSON";
/// A 64-bit integer (GraphQL's `Int` has 32 bits), as a JSON number.
pub const LONG: &str = "Long";
const ORDER: &str = "Order";
const RANGE: &str = "IndexRange";
const PAGE_INFO: &str = "PageInfo";

/// Nesting of a query (introspection's own query is 13 deep).
pub const MAX_DEPTH: usize = 24;
/// Fields in a query, weighted as async-graphql counts them.
pub const MAX_COMPLEXITY: usize = 2000;

/// The GraphQL type of a document field. Every field is `JSON` until Warren schemas
/// declare field types (then a typed field maps to its scalar, list or object type
/// here, and a reference to the referenced collection's type).
pub fn field_type(_collection: &Collection, _field: &str) -> TypeRef {
    TypeRef::named(JSON)
}

/// The GraphQL type of a schema function's parameter (`JSON` while parameters are
/// untyped; a missing argument is `null`, as in the language).
pub fn param_type(_function: &str, _param: &str) -> TypeRef {
    TypeRef::named(JSON)
}

/// The GraphQL type of a schema function's result.
pub fn result_type(_function: &str) -> TypeRef {
    TypeRef::named(JSON)
}

/// A GraphQL name: `[_A-Za-z][_0-9A-Za-z]*`, not starting with `__` (reserved).
pub fn is_name(s: &str) -> bool {
    let mut c = s.chars();
    c.next()
        .is_some_and(|f| f == '_' || f.is_ascii_alphabetic())
        && c.all(|x| x == '_' || x.is_ascii_alphanumeric())
        && !s.starts_with("__")
}

/// Names that cannot be a collection's type or one made from it.
const RESERVED_TYPES: &[&str] = &[
    "Query",
    "Mutation",
    "Subscription",
    "String",
    "Int",
    "Float",
    "Boolean",
    "ID",
    JSON,
    LONG,
    ORDER,
    RANGE,
    PAGE_INFO,
];

/// A document's own GraphQL fields, which its data fields cannot take.
const SYSTEM_FIELDS: &[&str] = &["id", "_fields", "_partition", "_version"];

/// Arguments of a connection, which index fields cannot take.
const PAGE_ARGS: &[&str] = &["range", "order", "first", "after"];

/// The data fields a collection's GraphQL type shows: the first component of each
/// index field path, in order of appearance (valid GraphQL names only).
pub fn known_fields(c: &Collection) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for ix in c.indexes.values() {
        for path in &ix.fields {
            if let Some(f) = path.first() {
                if is_name(f) && !SYSTEM_FIELDS.contains(&f.as_str()) && !out.contains(f) {
                    out.push(f.clone());
                }
            }
        }
    }
    out
}

/// The GraphQL argument names of an index's fields: the path joined with `_`
/// (`meta.slug` is `meta_slug`), made unique with a trailing `_` where two would meet
/// or one would take a connection argument's name.
pub fn index_args(fields: &[Vec<String>]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for path in fields {
        let mut name: String = path
            .join("_")
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        if !name.starts_with(|c: char| c == '_' || c.is_ascii_alphabetic())
            || name.starts_with("__")
        {
            name.insert_str(0, "f_");
        }
        while out.contains(&name) || PAGE_ARGS.contains(&name.as_str()) {
            name.push('_');
        }
        out.push(name);
    }
    out
}

fn args_json(ctx: &ResolverContext<'_>) -> Result<Args, async_graphql::Error> {
    let mut out = Args::new();
    for (k, v) in ctx.args.iter() {
        let j = v
            .as_value()
            .clone()
            .into_json()
            .map_err(|e| error("INVALID_ARGUMENT", format!("argument {k}: {e}")))?;
        out.insert(k.to_string(), j);
    }
    Ok(out)
}

fn gql(j: serde_json::Value) -> Result<Gql, async_graphql::Error> {
    Gql::from_json(j).map_err(|e| error("INTERNAL", e.to_string()))
}

fn caller<'a>(ctx: &ResolverContext<'a>) -> Result<&'a Arc<Caller>, async_graphql::Error> {
    ctx.data::<Arc<Caller>>()
}

/// A read's result as the field's value: a document (`None`: null), or a page.
fn field_value(
    read: &Read,
    v: &Value,
    args: &Args,
) -> Result<Option<FieldValue<'static>>, async_graphql::Error> {
    let bad = |e: warren_core::Error| engine_error(&e);
    Ok(match read {
        Read::ById { .. } if v.is_null() => None,
        Read::ById { .. } => Some(FieldValue::owned_any(exec::doc_of(v).map_err(bad)?)),
        _ => {
            let req = program::page_request(args).map_err(bad)?;
            Some(FieldValue::owned_any(exec::page_of(v, &req).map_err(bad)?))
        }
    })
}

/// The arguments of a read field.
fn read_args(read: &Read) -> Vec<InputValue> {
    let mut out = Vec::new();
    match read {
        Read::ById { .. } => out.push(InputValue::new("id", TypeRef::named_nn(TypeRef::ID))),
        Read::All { .. } => {}
        Read::Index { args, .. } => {
            for a in args {
                out.push(InputValue::new(a, TypeRef::named(JSON)).description(
                    "An index field: documents whose field equals this (give the index's fields in order; null finds a missing field)",
                ));
            }
            out.push(
                InputValue::new("range", TypeRef::named(RANGE))
                    .description("Bounds on the first index field after those given"),
            );
        }
    }
    if !matches!(read, Read::ById { .. }) {
        out.push(
            InputValue::new("order", TypeRef::named(ORDER))
                .description("ASC (the default) or DESC: the same order read backwards"),
        );
        out.push(
            InputValue::new("first", TypeRef::named(TypeRef::INT)).description(format!(
                "How many to give: 1 to {MAX_PAGE} ({DEFAULT_PAGE} when not given)"
            )),
        );
        out.push(
            InputValue::new("after", TypeRef::named(TypeRef::STRING)).description(
                "Start after this cursor (an edge's `cursor`, or `pageInfo.endCursor`)",
            ),
        );
    }
    out
}

/// The query field for `read`.
fn query_field(name: &str, ty: TypeRef, read: Read, svc: &Arc<Service>, doc: String) -> Field {
    let read = Arc::new(read);
    let r = read.clone();
    let svc = svc.clone();
    let mut f = Field::new(name, ty, move |ctx| {
        let read = r.clone();
        let svc = svc.clone();
        FieldFuture::new(async move {
            let caller = caller(&ctx)?;
            let args = args_json(&ctx)?;
            let source = program::source(&read, &args).map_err(|e| engine_error(&e))?;
            // Each read is charged to the identity's request budget (but for a live
            // query's runs again, which others' writes cause).
            if caller.charged {
                gateway::take_http(&svc.app, &caller.auth, Budget::Frames, 1)
                    .await
                    .map_err(|e| error(&e.code, e.message))?;
            }
            let snap = caller
                .snapshot
                .get_or_try_init(|| exec::snapshot(&svc, caller.charged))
                .await?
                .clone();
            let (r, reads) = exec::run(&svc, caller, snap, source).await;
            if let Some(live) = &caller.reads {
                live.lock().expect("reads lock").merge(reads);
            }
            field_value(&read, &r?, &args)
        })
    })
    .description(doc);
    for a in read_args(&read) {
        f = f.argument(a);
    }
    f
}

/// The subscription field for `read`. Subscriptions are live queries: the WebSocket
/// session runs the operation as a query (these fields mirror the query fields) and
/// again when a write touches what it read (`exec::live`), so this resolver only
/// answers a subscription sent where no session runs it.
fn live_field(name: &str, ty: TypeRef, read: &Read, doc: String) -> SubscriptionField {
    let mut f =
        SubscriptionField::new(name, ty, |_| {
            SubscriptionFieldFuture::new(async {
                Err::<
                    futures_util::stream::Empty<Result<FieldValue<'static>, async_graphql::Error>>,
                    _,
                >(error(
                    codes::BAD_REQUEST,
                    "subscriptions run over a WebSocket at /v1/graphql (graphql-transport-ws)",
                ))
            })
        })
        .description(doc);
    for a in read_args(read) {
        f = f.argument(a);
    }
    f
}

/// A resolver that reads its parent synchronously.
fn parent_field<T: 'static>(
    name: &str,
    ty: TypeRef,
    get: impl for<'a> Fn(&'a T) -> Result<Option<FieldValue<'a>>, async_graphql::Error>
        + Send
        + Sync
        + 'static,
) -> Field {
    let get = Arc::new(get);
    Field::new(name, ty, move |ctx| {
        let get = get.clone();
        FieldFuture::new(async move {
            let parent = ctx.parent_value.try_downcast_ref::<T>()?;
            get(parent)
        })
    })
}

/// The document type of collection `c`.
fn doc_type(c: &Collection) -> Object {
    let mut o = Object::new(&c.name)
        .description(format!(
            "A document of collection {}: its id, its fields (`_fields` holds them all), its partition and version.",
            c.name
        ))
        .field(parent_field::<Doc>("id", TypeRef::named_nn(TypeRef::ID), |d| {
            Ok(Some(FieldValue::value(gql(d.data.get("id").cloned().unwrap_or_default())?)))
        }))
        .field(
            parent_field::<Doc>("_fields", TypeRef::named_nn(JSON), |d| {
                Ok(Some(FieldValue::value(gql(d.data.clone())?)))
            })
            .description("Every field of the document, and its id, as one JSON object"),
        )
        .field(
            parent_field::<Doc>("_partition", TypeRef::named_nn(TypeRef::STRING), |d| {
                Ok(Some(FieldValue::value(d.partition.clone())))
            })
            .description("The partition the document belongs to (fixed when it was created)"),
        )
        .field(
            parent_field::<Doc>("_version", TypeRef::named_nn(LONG), |d| {
                Ok(Some(FieldValue::value(Gql::Number(d.version.into()))))
            })
            .description("The log position of the document's last write"),
        );
    for f in known_fields(c) {
        let name = f.clone();
        o = o.field(parent_field::<Doc>(&f, field_type(c, &f), move |d| {
            Ok(Some(FieldValue::value(gql(d
                .data
                .get(&name)
                .cloned()
                .unwrap_or_default())?)))
        }));
    }
    o
}

fn connection_types(c: &str) -> (Object, Object) {
    let edge = Object::new(format!("{c}Edge"))
        .field(parent_field::<Edge>("node", TypeRef::named_nn(c), |e| {
            Ok(Some(FieldValue::borrowed_any(&e.node)))
        }))
        .field(
            parent_field::<Edge>("cursor", TypeRef::named_nn(TypeRef::STRING), |e| {
                Ok(Some(FieldValue::value(e.cursor.clone())))
            })
            .description("Pass as `after` to read on from this edge"),
        );
    let conn = Object::new(format!("{c}Connection"))
        .description(format!("A page of {c} documents (a Relay connection)"))
        .field(parent_field::<Page>(
            "edges",
            TypeRef::named_nn_list_nn(format!("{c}Edge")),
            |p| {
                Ok(Some(FieldValue::list(
                    p.edges.iter().map(|e| FieldValue::borrowed_any(e)),
                )))
            },
        ))
        .field(parent_field::<Page>(
            "nodes",
            TypeRef::named_nn_list_nn(c),
            |p| {
                Ok(Some(FieldValue::list(
                    p.edges.iter().map(|e| FieldValue::borrowed_any(&e.node)),
                )))
            },
        ))
        .field(parent_field::<Page>(
            "pageInfo",
            TypeRef::named_nn(PAGE_INFO),
            |p| Ok(Some(FieldValue::borrowed_any(p))),
        ));
    (edge, conn)
}

fn page_info() -> Object {
    let cursor = |p: &Page, last: bool| -> Option<String> {
        let e = if last {
            p.edges.last()
        } else {
            p.edges.first()
        };
        e.map(|e| e.cursor.clone())
    };
    Object::new(PAGE_INFO)
        .field(
            parent_field::<Page>("hasNextPage", TypeRef::named_nn(TypeRef::BOOLEAN), |p| {
                Ok(Some(FieldValue::value(p.has_next)))
            })
            .description("Whether more documents follow this page (now)"),
        )
        .field(
            parent_field::<Page>(
                "hasPreviousPage",
                TypeRef::named_nn(TypeRef::BOOLEAN),
                |p| Ok(Some(FieldValue::value(p.has_previous))),
            )
            .description("Whether this page started after a cursor"),
        )
        .field(parent_field::<Page>(
            "startCursor",
            TypeRef::named(TypeRef::STRING),
            move |p| Ok(cursor(p, false).map(FieldValue::value)),
        ))
        .field(parent_field::<Page>(
            "endCursor",
            TypeRef::named(TypeRef::STRING),
            move |p| Ok(cursor(p, true).map(FieldValue::value)),
        ))
}

/// The reads of collection `c`, with their field names and descriptions.
fn reads(c: &Collection) -> Vec<(String, Read, String)> {
    let name = &c.name;
    let mut out = vec![
        (
            format!("{name}_byId"),
            Read::ById {
                collection: name.clone(),
            },
            format!("{name}.byId(id): the document, or null if there is none or the caller may not read it"),
        ),
        (
            format!("{name}_all"),
            Read::All {
                collection: name.clone(),
            },
            format!("{name}.all(): every document the caller may read, in id order"),
        ),
    ];
    for ix in c.indexes.values() {
        let fields: Vec<String> = ix.fields.iter().map(|p| p.join(".")).collect();
        out.push((
            format!("{name}_{}", ix.name),
            Read::Index {
                collection: name.clone(),
                index: ix.name.clone(),
                args: index_args(&ix.fields),
            },
            format!(
                "{name}.{}(...): {}index [{}]: the documents whose first fields equal the arguments given, ordered by the fields after them, then id",
                ix.name,
                if ix.unique { "unique " } else { "" },
                fields.join(", ")
            ),
        ));
    }
    out
}

/// Tags validation errors with their code (parse errors are tagged where the query is
/// parsed, `super::prepare`).
struct ErrorCodes;

impl ExtensionFactory for ErrorCodes {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(ErrorCodes)
    }
}

#[async_graphql::async_trait::async_trait]
impl Extension for ErrorCodes {
    async fn validation(
        &self,
        ctx: &ExtensionContext<'_>,
        next: NextValidation<'_>,
    ) -> Result<ValidationResult, Vec<ServerError>> {
        next.run(ctx).await.map_err(|es| {
            es.into_iter()
                .map(|mut e| {
                    e.extensions
                        .get_or_insert_with(Default::default)
                        .set("code", codes::VALIDATION_FAILED);
                    e
                })
                .collect()
        })
    }
}

/// Builds the GraphQL schema of `warren`. Fails, saying why, when a name cannot be
/// mapped (a collection named like a GraphQL type, two fields of one name).
pub fn build(warren: &warren_core::Schema, svc: Arc<Service>) -> Result<Schema, String> {
    let mut types: BTreeSet<String> = RESERVED_TYPES.iter().map(|s| s.to_string()).collect();
    let mut claim_type = |t: String, what: &str| {
        if !is_name(&t) {
            return Err(format!("{what}: {t} is not a GraphQL name"));
        }
        if !types.insert(t.clone()) {
            return Err(format!("{what}: the GraphQL type name {t} is taken twice"));
        }
        Ok(())
    };
    let mut query = Object::new("Query").field(
        Field::new("_schemaVersion", TypeRef::named_nn(TypeRef::STRING), {
            let v = warren.version().to_owned();
            move |_| FieldFuture::Value(Some(FieldValue::value(v.clone())))
        })
        .description("The version of the Warren schema this API was made from"),
    );
    let mut subscription = Subscription::new("Subscription");
    let mut query_names: BTreeSet<String> = BTreeSet::new();
    let mut objects = Vec::new();
    for c in warren.collections.values() {
        claim_type(c.name.clone(), &format!("collection {}", c.name))?;
        claim_type(
            format!("{}Connection", c.name),
            &format!("collection {}", c.name),
        )?;
        claim_type(format!("{}Edge", c.name), &format!("collection {}", c.name))?;
        objects.push(doc_type(c));
        let (edge, conn) = connection_types(&c.name);
        objects.push(edge);
        objects.push(conn);
        for (name, read, doc) in reads(c) {
            if !is_name(&name) || !query_names.insert(name.clone()) {
                return Err(format!(
                    "collection {}: the query field {name} is not a GraphQL name or is taken twice",
                    c.name
                ));
            }
            let ty = match read {
                Read::ById { .. } => TypeRef::named(&c.name),
                _ => TypeRef::named_nn(format!("{}Connection", c.name)),
            };
            subscription = subscription.field(live_field(
                &name,
                ty.clone(),
                &read,
                format!("{doc}; sent again each time it changes"),
            ));
            query = query.field(query_field(&name, ty, read, &svc, doc));
        }
    }
    let mut mutation = Object::new("Mutation");
    for (name, f) in &warren.functions {
        if !is_name(name) {
            return Err(format!("function {name}: not a GraphQL name"));
        }
        let mut field = Field::new(name, result_type(name), {
            let svc = svc.clone();
            let name = name.clone();
            let params = f.params.clone();
            move |ctx| {
                let svc = svc.clone();
                let name = name.clone();
                let params = params.clone();
                FieldFuture::new(async move {
                    let caller = caller(&ctx)?;
                    let given = args_json(&ctx)?;
                    let mut args = warren_core::value::Object::new();
                    for p in &params {
                        if let Some(j) = given.get(p) {
                            let v = Value::from_json(j).map_err(|e| engine_error(&e))?;
                            args.insert(p.clone(), v);
                        }
                    }
                    let r = exec::call(&svc, caller, &name, Value::Object(args)).await?;
                    Ok(Some(FieldValue::value(gql(r.to_json())?)))
                })
            }
        })
        .description(format!(
            "Calls function {name}({}) as one transaction; the result once it is committed",
            f.params.join(", ")
        ));
        for p in &f.params {
            if !is_name(p) {
                return Err(format!(
                    "function {name}: parameter {p} is not a GraphQL name"
                ));
            }
            field = field.argument(InputValue::new(p, param_type(name, p)));
        }
        mutation = mutation.field(field);
    }
    let has_mutation = !warren.functions.is_empty();
    let has_subscription = !warren.collections.is_empty();
    let mut b = Schema::build(
        "Query",
        has_mutation.then_some("Mutation"),
        has_subscription.then_some("Subscription"),
    )
    .register(
        Scalar::new(JSON).description(
            "Any JSON value: a Warren value (ints and floats keep their kind: 1 and 1.0)",
        ),
    )
    .register(Scalar::new(LONG).description("A 64-bit integer, as a JSON number"))
    .register(Enum::new(ORDER).item("ASC").item("DESC"))
    .register(
        InputObject::new(RANGE)
            .description("Bounds on an index field: at most one of gt and gte, one of lt and lte")
            .field(InputValue::new("gt", TypeRef::named(JSON)))
            .field(InputValue::new("gte", TypeRef::named(JSON)))
            .field(InputValue::new("lt", TypeRef::named(JSON)))
            .field(InputValue::new("lte", TypeRef::named(JSON))),
    )
    .register(page_info())
    .register(query)
    .extension(ErrorCodes)
    .limit_depth(MAX_DEPTH)
    .limit_complexity(MAX_COMPLEXITY);
    for o in objects {
        b = b.register(o);
    }
    if has_mutation {
        b = b.register(mutation);
    }
    if has_subscription {
        b = b.register(subscription);
    }
    b.finish().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(is_name("Todo_byOwner") && is_name("_x") && !is_name("__x") && !is_name("1a"));
        assert_eq!(
            index_args(&[
                vec!["meta".into(), "slug".into()],
                vec!["meta_slug".into()],
                vec!["first".into()],
            ]),
            ["meta_slug", "meta_slug_", "first_"]
        );
    }
}
