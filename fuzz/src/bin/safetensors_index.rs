//! AFL target: [`shrink_fuzz::safetensors_index`].
fn main() {
    afl::fuzz!(|data: &[u8]| {
        shrink_fuzz::safetensors_index(data);
    });
}
