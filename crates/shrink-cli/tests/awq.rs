//! TEMPORARY harness (calls run_awq directly until `--method awq` is wired).
#![allow(dead_code, unused_imports)]

#[path = "common/mod.rs"]
mod helpers;
#[path = "../src/common.rs"]
mod common;
#[path = "../src/commands/awq.rs"]
mod awq_cmd;
#[path = "../src/commands/calibrated.rs"]
mod calibrated;
mod commands {
    pub(crate) use super::awq_cmd as awq;
    pub(crate) use super::calibrated;
}

use std::path::{Path, PathBuf};

use shrink_formats::float::FloatType;
use shrink_methods::calib::CalibSpec;

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

#[test]
#[ignore]
fn measure() {
    let model = PathBuf::from(env("AWQ_MODEL").unwrap());
    let out = PathBuf::from(env("AWQ_OUT").unwrap());
    let calib = commands::calibrated::CalibArgs {
        file: PathBuf::from(env("AWQ_CALIB").unwrap()),
        lee: env("AWQ_LEE").is_some(),
        spec: CalibSpec {
            samples: env("AWQ_SAMPLES").unwrap().parse().unwrap(),
            seqlen: env("AWQ_SEQLEN").unwrap().parse().unwrap(),
            seed: 0,
        },
    };
    commands::awq::run_awq(
        &model,
        &out,
        &calib,
        4,
        env("AWQ_GROUP").unwrap().parse().unwrap(),
        env("AWQ_SEARCH").unwrap().parse().unwrap(),
        &shrink_methods::select::Selection::default(),
        FloatType::parse(&env("AWQ_DENSE").unwrap_or("f32".into())).unwrap(),
        false,
    )
    .unwrap();
}
