//! `warren-difftest SEED COUNT` prints the differential run's lines (the native side);
//! `warren-difftest --show SEED INDEX` prints the source of one generated program.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |s: &str| -> u64 {
        s.parse()
            .unwrap_or_else(|_| panic!("not a number: {s:?}; usage: warren-difftest SEED COUNT"))
    };
    match args.as_slice() {
        [flag, seed, i] if flag == "--show" => {
            println!("{}", warren_difftest::source(num(seed), num(i)));
        }
        [seed, count] => {
            // The same function the wasm module's `run` calls.
            print!(
                "{}",
                warren_core::testing::gen::differential(num(seed), num(count))
            );
        }
        _ => {
            eprintln!("usage: warren-difftest SEED COUNT | warren-difftest --show SEED INDEX");
            std::process::exit(2);
        }
    }
}
