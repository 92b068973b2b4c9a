//! One module per subcommand.

pub mod compare;
pub mod convert;
pub mod eval;
pub mod generate;
pub mod inspect;
pub mod quantize;
