//! AFL target: [`shrink_fuzz::gguf`].
fn main() {
    afl::fuzz!(|data: &[u8]| {
        shrink_fuzz::gguf(data);
    });
}
