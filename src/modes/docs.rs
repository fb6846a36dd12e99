//! `vigil completions` and `vigil man`: shell completion scripts and manual
//! pages, generated from the command line's own definition.

use std::io::Write;

use anyhow::Context;
use clap::CommandFactory;

use super::{ExitStatus, create_dir};
use crate::cli::{Cli, CompletionsArgs, ManArgs};

pub fn completions(args: &CompletionsArgs) -> anyhow::Result<ExitStatus> {
    let mut cmd = Cli::command();
    clap_complete::generate(args.shell, &mut cmd, "vigil", &mut std::io::stdout());
    Ok(ExitStatus::Ok)
}

pub fn man(args: &ManArgs) -> anyhow::Result<ExitStatus> {
    let cmd = Cli::command();
    match &args.out {
        Some(dir) => {
            create_dir(dir, "the manual page directory")?;
            clap_mangen::generate_to(cmd, dir)
                .with_context(|| format!("writing manual pages into {}", dir.display()))?;
        }
        None => {
            let mut page = Vec::new();
            clap_mangen::Man::new(cmd)
                .render(&mut page)
                .context("rendering the manual page")?;
            std::io::stdout()
                .write_all(&page)
                .context("writing the manual page")?;
        }
    }
    Ok(ExitStatus::Ok)
}
