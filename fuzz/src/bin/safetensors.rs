//! AFL target: [`shrink_fuzz::safetensors`].
fn main() {
    afl::fuzz!(|data: &[u8]| {
        shrink_fuzz::safetensors(data);
    });
}
