//! Shared by the tests that run `warren serve` as a process.

use std::io::{BufRead, BufReader};
use std::process::Child;

/// Reads the first line `warren serve` prints (`warren: serving on http://ADDR ...`)
/// and gives the address it serves on, or the line it printed instead. The child's
/// stdout must be piped; it is taken.
pub fn serving_addr(child: &mut Child) -> Result<String, String> {
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout piped"))
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    line.split("http://")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .map(str::to_owned)
        .ok_or(line)
}
