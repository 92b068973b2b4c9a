//! AFL target: [`shrink_fuzz::quantized_layouts`].
fn main() {
    afl::fuzz!(|data: &[u8]| {
        shrink_fuzz::quantized_layouts(data);
    });
}
