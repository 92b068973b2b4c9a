//! AFL target: [`shrink_fuzz::chat_template`].
fn main() {
    afl::fuzz!(|data: &[u8]| {
        shrink_fuzz::chat_template(data);
    });
}
