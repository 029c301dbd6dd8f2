//! Check outcomes and the report, rendered as text, JSON or JUnit XML.

use std::time::Duration;

use agentfs_host::loader::PluginDetails;
use serde::Serialize;

/// How one check ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", content = "reason", rename_all = "lowercase")]
pub enum Outcome {
    /// The plugin behaved as the contract says.
    Passed,
    /// It did not; the reason says how.
    Failed(String),
    /// The check does not apply; the reason says why.
    Skipped(String),
}

/// One check's result.
#[derive(Debug, Clone, Serialize)]
pub struct CheckResult {
    /// Stable dotted name (`backstore.reflink.independence`).
    pub name: String,
    /// How it ended.
    #[serde(flatten)]
    pub outcome: Outcome,
    /// Wall time, in milliseconds.
    pub millis: u128,
}

/// The report of one conformance run.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Report {
    /// What the plugin said about itself (absent if it could not be loaded).
    pub plugin: Option<PluginDetails>,
    /// The label the plugin was asked for by.
    pub target: String,
    /// Every check, in run order.
    pub checks: Vec<CheckResult>,
}

impl Report {
    /// Appends a result.
    pub fn push(&mut self, name: &str, outcome: Outcome, took: Duration) {
        self.checks.push(CheckResult {
            name: name.to_string(),
            outcome,
            millis: took.as_millis(),
        });
    }

    fn count(&self, f: impl Fn(&Outcome) -> bool) -> usize {
        self.checks.iter().filter(|c| f(&c.outcome)).count()
    }
    /// Number of passed checks.
    pub fn passed(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Passed))
    }
    /// Number of failed checks.
    pub fn failed(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Failed(_)))
    }
    /// Number of skipped checks.
    pub fn skipped(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Skipped(_)))
    }
    /// The result of the check named `name`, if it ran.
    pub fn get(&self, name: &str) -> Option<&CheckResult> {
        self.checks.iter().find(|c| c.name == name)
    }

    /// Panics with every failure listed, unless all checks passed or skipped.
    pub fn assert_all_passed(&self) {
        if self.failed() > 0 {
            panic!(
                "conformance failures for {}:\n{}",
                self.target,
                self.to_text()
            );
        }
    }

    /// `N passed, N failed, N skipped`.
    pub fn summary(&self) -> String {
        format!(
            "{} passed, {} failed, {} skipped",
            self.passed(),
            self.failed(),
            self.skipped()
        )
    }

    /// Human-readable report; ends with the summary line.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        match &self.plugin {
            Some(p) => s.push_str(&format!(
                "conformance: {} {} ({}, ABI {}) {}\n",
                p.name,
                p.version,
                p.kind,
                p.abi_version,
                p.path.display()
            )),
            None => s.push_str(&format!("conformance: {}\n", self.target)),
        }
        for c in &self.checks {
            let line = match &c.outcome {
                Outcome::Passed => format!("  PASS  {}", c.name),
                Outcome::Failed(r) => format!("  FAIL  {}: {r}", c.name),
                Outcome::Skipped(r) => format!("  SKIP  {}: {r}", c.name),
            };
            s.push_str(&line);
            s.push('\n');
        }
        s.push_str(&self.summary());
        s.push('\n');
        s
    }

    /// JSON report with counts.
    pub fn to_json(&self) -> String {
        let v = serde_json::json!({
            "target": self.target,
            "plugin": self.plugin,
            "passed": self.passed(),
            "failed": self.failed(),
            "skipped": self.skipped(),
            "checks": self.checks,
        });
        serde_json::to_string_pretty(&v).unwrap_or_default()
    }

    /// JUnit XML, one test case per check.
    pub fn to_junit(&self) -> String {
        use quick_junit::{NonSuccessKind, Report as JReport, TestCase, TestCaseStatus, TestSuite};
        let suite_name = self
            .plugin
            .as_ref()
            .map(|p| format!("agentfs-conformance.{}", p.name))
            .unwrap_or_else(|| "agentfs-conformance".to_string());
        let mut suite = TestSuite::new(suite_name.clone());
        for c in &self.checks {
            let status = match &c.outcome {
                Outcome::Passed => TestCaseStatus::success(),
                Outcome::Failed(r) => {
                    let mut st = TestCaseStatus::non_success(NonSuccessKind::Failure);
                    st.set_message(r.clone());
                    st
                }
                Outcome::Skipped(r) => {
                    let mut st = TestCaseStatus::skipped();
                    st.set_message(r.clone());
                    st
                }
            };
            let mut tc = TestCase::new(c.name.clone(), status);
            tc.set_time(Duration::from_millis(c.millis as u64));
            suite.add_test_case(tc);
        }
        let mut report = JReport::new(suite_name);
        report.add_test_suite(suite);
        report.to_string().unwrap_or_default()
    }
}
