//! Where results go: stdout, as JSON lines ([`super::json`]) or tables
//! ([`super::table`]) per `--output`. Each record is flushed at once so a
//! script reading `--wait` progress sees every line when it happens.

use super::{CliError, Format, json, table};
use crate::pb;
use std::io::Write;
use std::time::SystemTime;

pub struct Printer {
    format: Format,
    out: std::io::Stdout,
}

impl Printer {
    pub fn stdout(format: Format) -> Self {
        Self {
            format,
            out: std::io::stdout(),
        }
    }

    /// Writes `text` as is (it ends in a newline) and flushes.
    pub fn raw(&mut self, text: &str) -> Result<(), CliError> {
        self.out.write_all(text.as_bytes())?;
        self.out.flush()?;
        Ok(())
    }

    fn line(&mut self, text: &str) -> Result<(), CliError> {
        self.raw(&format!("{text}\n"))
    }

    /// The answer of get/request/approve/reject/cancel.
    pub fn promotion(&mut self, p: &pb::Promotion) -> Result<(), CliError> {
        match self.format {
            Format::Json => self.line(&json::promotion(p)),
            Format::Table => self.raw(&table::promotion(p, SystemTime::now())),
        }
    }

    /// The answer of approve: while WAITING, a table says only that the
    /// approval was recorded and what the promotion waits for (`get`
    /// shows the rest); otherwise as [`Printer::promotion`].
    pub fn approval(&mut self, p: &pb::Promotion) -> Result<(), CliError> {
        match self.format {
            Format::Table if p.state == pb::PromotionState::Waiting as i32 => {
                self.raw(&table::approval_waiting(p))
            }
            Format::Json | Format::Table => self.promotion(p),
        }
    }

    /// A change seen while following a promotion with --wait.
    pub fn progress(&mut self, p: &pb::Promotion) -> Result<(), CliError> {
        match self.format {
            Format::Json => self.line(&json::promotion(p)),
            Format::Table => self.raw(&table::progress(p)),
        }
    }

    /// A release: its summary, then one row per member.
    pub fn release(&mut self, r: &pb::Release) -> Result<(), CliError> {
        match self.format {
            Format::Json => self.line(&json::release(r)),
            Format::Table => self.raw(&table::release(r, SystemTime::now())),
        }
    }

    /// The answer of `list`: in a table, a release's members grouped under
    /// one row for the release ([`table::listing`]); with `-o json`, one
    /// Promotion per line as for a single promotion (each member's
    /// `releaseId` names its release).
    pub fn promotions(&mut self, ps: &[pb::Promotion]) -> Result<(), CliError> {
        match self.format {
            Format::Json => ps.iter().try_for_each(|p| self.line(&json::promotion(p))),
            Format::Table => self.raw(&table::listing(ps, SystemTime::now())),
        }
    }

    pub fn audit_entries(&mut self, es: &[pb::AuditEntry]) -> Result<(), CliError> {
        match self.format {
            Format::Json => es.iter().try_for_each(|e| self.line(&json::audit_entry(e))),
            Format::Table => self.raw(&table::audit_entries(es)),
        }
    }

    /// `repository` is the one asked about (the answer does not repeat it).
    pub fn deployed(&mut self, d: &pb::Deployed, repository: &str) -> Result<(), CliError> {
        match self.format {
            Format::Json => self.line(&json::deployed(d)),
            Format::Table => self.raw(&table::deployed(d, repository, SystemTime::now())),
        }
    }

    pub fn gate_report(&mut self, r: &pb::GateReport) -> Result<(), CliError> {
        match self.format {
            Format::Json => self.line(&json::gate_report(r)),
            Format::Table => self.raw(&table::gate_report(r)),
        }
    }

    pub fn checks(&mut self, checks: &[pb::CheckResult]) -> Result<(), CliError> {
        match self.format {
            Format::Json => checks.iter().try_for_each(|r| self.line(&json::check(r))),
            Format::Table => self.raw(&table::checks(checks)),
        }
    }

    pub fn checkpoint(&mut self, c: &pb::Checkpoint) -> Result<(), CliError> {
        match self.format {
            Format::Json => self.line(&json::checkpoint(c)),
            Format::Table => self.raw(&table::checkpoint(c)),
        }
    }

    pub fn policy(&mut self, p: &pb::Policy) -> Result<(), CliError> {
        match self.format {
            Format::Json => self.line(&json::policy(p)),
            Format::Table => self.raw(&table::policy(p)),
        }
    }

    pub fn verification(&mut self, v: &pb::VerifyAuditLogResponse) -> Result<(), CliError> {
        match self.format {
            Format::Json => self.line(&json::verification(v)),
            Format::Table => self.raw(&table::verification(v)),
        }
    }

    /// A `grpc.health.v1` serving status.
    pub fn health(&mut self, status: i32, name: Option<&str>) -> Result<(), CliError> {
        match self.format {
            Format::Json => self.line(&json::health(status, name)),
            Format::Table => self.line(&name.map_or_else(|| status.to_string(), str::to_owned)),
        }
    }
}
