fn main() {
    println!("semaphore-agent {}", semaphore_agent::VERSION);
}
