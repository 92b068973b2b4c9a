//! AFL target: [`shrink_fuzz::tokenizer_json`].
fn main() {
    afl::fuzz!(|data: &[u8]| {
        shrink_fuzz::tokenizer_json(data);
    });
}
