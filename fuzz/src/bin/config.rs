//! AFL target: [`shrink_fuzz::config`].
fn main() {
    afl::fuzz!(|data: &[u8]| {
        shrink_fuzz::config(data);
    });
}
