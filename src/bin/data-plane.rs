//! `data-plane`: the MCP gateway.

fn main() {
    eprintln!("data-plane: not available in this build");
    std::process::exit(2);
}
