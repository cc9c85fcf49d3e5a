//! The hash service as a process, for `benches/coldstart.rs`: hashes its first argument
//! and prints the digest.

#[path = "../logic.rs"]
mod logic;

fn main() {
    let input = std::env::args().nth(1).unwrap_or_default();
    match logic::handle(input.as_bytes()) {
        Ok(out) => println!("{}", String::from_utf8_lossy(&out)),
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    }
}
