//! AFL target: [`shrink_fuzz::imatrix`].
fn main() {
    afl::fuzz!(|data: &[u8]| {
        shrink_fuzz::imatrix(data);
    });
}
