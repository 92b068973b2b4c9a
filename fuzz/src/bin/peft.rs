//! AFL target: [`shrink_fuzz::peft`].
fn main() {
    afl::fuzz!(|data: &[u8]| {
        shrink_fuzz::peft(data);
    });
}
