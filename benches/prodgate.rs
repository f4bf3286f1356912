//! Placeholder until the benchmark lands: `cargo bench --bench prodgate`.
fn main() {
    println!("prodgate benchmarks: not yet written");
}
