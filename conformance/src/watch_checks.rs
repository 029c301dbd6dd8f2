//! Checks for watch-provider plugins (DESIGN §6). The table-driven event
//! checks arrive with the providers; these certify loading and the API.

use agentfs_host::{
    config::PluginEntry,
    plugins::{load_watch_provider, SearchPath},
};
use agentfs_plugin_api::watch::WatchApi;

use crate::{timed, Outcome, Report};

/// Constructs the provider and runs the checks that apply.
pub(crate) fn run_all(report: &mut Report, entry: &PluginEntry, search: &SearchPath) {
    let p = match load_watch_provider(entry, search) {
        Ok(p) => {
            report.push("watch.construct", Outcome::Passed, Default::default());
            p
        }
        Err(e) => {
            report.push(
                "watch.construct",
                Outcome::Failed(e.to_string()),
                Default::default(),
            );
            return;
        }
    };
    timed(report, "watch.api", || match p.api() {
        Ok(a) if [WatchApi::KQUEUE, WatchApi::FSEVENTS, WatchApi::INOTIFY].contains(&a) => {
            Outcome::Passed
        }
        Ok(a) => Outcome::Failed(format!("unknown watch API {}", a.0)),
        Err(e) => Outcome::Failed(format!("api(): {e}")),
    });
}
