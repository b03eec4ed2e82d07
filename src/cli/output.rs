//! What every command prints through: stdout and stderr that tolerate a reader who has gone
//! (`cutover render FILE | head -1`), JSON or YAML values, and a deployment file read and parsed
//! once, with every problem reported the same way by `validate`, `render` and `diff`.

use std::fmt;
use std::io::{self, Write};
use std::path::Path;

use anyhow::Context as _;
use clap::ValueEnum;

use crate::render;
use crate::spec::{self, Spec, SpecError};

/// How `render` and `bootstrap` print what they make.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Yaml,
    Json,
}

/// Prints a JSON value as pretty JSON or as YAML.
pub fn print_value(value: &serde_json::Value, format: Format) -> anyhow::Result<()> {
    say(format_args!("{}", value_text(value, format)?))?;
    Ok(())
}

/// What [`print_value`] prints.
pub fn value_text(value: &serde_json::Value, format: Format) -> anyhow::Result<String> {
    Ok(match format {
        Format::Json => format!("{}\n", serde_json::to_string_pretty(value)?),
        Format::Yaml => render::yaml(value)?,
    })
}

/// Whether output reached its reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    Yes,
    /// The pipe was closed (`cutover render FILE | head -1`): the reader has seen enough. The
    /// command goes on quietly and exits as it would have; later output goes nowhere.
    Closed,
}

/// Prints to stdout.
pub fn say(args: fmt::Arguments) -> anyhow::Result<Written> {
    written(write_all(io::stdout().lock(), args), "stdout")
}

/// Prints to stderr.
pub fn complain(args: fmt::Arguments) -> anyhow::Result<Written> {
    written(write_all(io::stderr().lock(), args), "stderr")
}

fn write_all(mut to: impl Write, args: fmt::Arguments) -> io::Result<()> {
    to.write_fmt(args)?;
    to.flush()
}

fn written(result: io::Result<()>, to: &str) -> anyhow::Result<Written> {
    match result {
        Ok(()) => Ok(Written::Yes),
        Err(err) if err.kind() == io::ErrorKind::BrokenPipe => Ok(Written::Closed),
        Err(err) => Err(err).with_context(|| format!("cannot write to {to}")),
    }
}

/// Why a deployment file could not be used.
pub enum Failure {
    Unreadable(String, io::Error),
    Invalid(SpecError),
}

impl Failure {
    /// Prints it to stderr: every problem, then how many.
    pub fn report(&self) -> anyhow::Result<()> {
        match self {
            Failure::Unreadable(label, err) => {
                complain(format_args!("error: cannot read {label}: {err}\n"))?;
            }
            Failure::Invalid(err) => {
                let n = err.problems.len();
                let s = if n == 1 { "" } else { "s" };
                complain(format_args!("{err}\n{}: {n} problem{s}\n", err.file))?;
            }
        }
        Ok(())
    }
}

/// Reads a deployment file and parses it, the one parse a command makes: size, UTF-8 (with
/// the position of the first bad byte), YAML and every check, against the same limits as
/// `serve`.
pub fn read_spec(file: &Path) -> Result<Spec, Failure> {
    let label = file.display().to_string();
    let bytes = read_file(file).map_err(|err| Failure::Unreadable(label.clone(), err))?;
    let spec = spec::parse_bytes(&label, &bytes).map_err(Failure::Invalid)?;
    let read = crate::watch::read_pem_files(file, &spec::pem_paths(&spec));
    let (spec, warnings) = spec::load_pem_files(spec, &label, &read, std::time::SystemTime::now())
        .map_err(Failure::Invalid)?;
    for w in warnings {
        let _ = complain(format_args!(
            "{label}:{}:{}: {}\n",
            w.line, w.column, w.message
        ));
    }
    Ok(spec)
}

/// Reads at most one byte more than the file size limit, so that a huge file (or a device
/// such as /dev/zero) is refused by [`spec::parse_bytes`] without being read whole. Unlike the
/// server, a one-shot command reads pipes too (`cutover validate <(generate)`).
fn read_file(path: &Path) -> io::Result<Vec<u8>> {
    crate::watch::read_bounded(std::fs::File::open(path)?)
}
