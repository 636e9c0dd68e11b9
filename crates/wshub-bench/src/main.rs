//! `wshub-bench`: a load generator for WebSocket chat hubs and wshub.v1 channels. This file
//! only parses the command line and dispatches: `idle`, `fanout`, `channel` and `churn` run in
//! the coordinator (which starts worker processes), `recover` runs on one connection in this
//! process, `drain` (a node taken out of service) runs all its connections in this process,
//! the hidden `worker` subcommand is one of those workers.

mod cli;
mod client;
mod conn;
mod coordinator;
mod deflate;
mod drain;
mod hist;
mod payload;
mod plan;
mod proto;
mod recover;
mod report;
mod sys;
mod v1;
mod wire;
mod worker;

use std::process::ExitCode;

use clap::Parser;
use serde::Serialize;

use cli::{Cli, Cmd};

fn print<R: Serialize>(report: &R, json: bool, human: impl FnOnce(&R) -> String) -> ExitCode {
    if json {
        match serde_json::to_string(report) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                eprintln!("wshub-bench: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        print!("{}", human(report));
    }
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome =
        match &cli.command {
            Cmd::Worker => return worker::main(),
            Cmd::Idle(args) => {
                coordinator::idle(args).map(|(r, json)| print(&r, json, report::IdleReport::human))
            }
            Cmd::Fanout(args) => coordinator::fanout(args)
                .map(|(r, json)| print(&r, json, report::FanoutReport::human)),
            Cmd::Channel(args) => coordinator::channel(args)
                .map(|(r, json)| print(&r, json, report::ChannelReport::human)),
            Cmd::Recover(args) => recover::recover(args)
                .map(|(r, json)| print(&r, json, report::RecoverReport::human)),
            Cmd::Churn(args) => coordinator::churn(args)
                .map(|(r, json)| print(&r, json, report::ChurnReport::human)),
            Cmd::Drain(args) => {
                drain::drain(args).map(|(r, json)| print(&r, json, drain::DrainReport::human))
            }
        };
    match outcome {
        Ok(code) => code,
        Err(message) => {
            eprintln!("wshub-bench: {message}");
            ExitCode::FAILURE
        }
    }
}
