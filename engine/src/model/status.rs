//! Item and job statuses, and the one table that says which item transitions are legal.

use std::fmt;
use std::str::FromStr;

use poem_openapi::Enum;
use serde::{Deserialize, Serialize};

/// Where an item is in its life. `Succeeded` and `Cancelled` are final; `Failed` and
/// `NeedsReview` are outcomes an operator may send back to the queue.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Enum,
)]
#[serde(rename_all = "snake_case")]
#[oai(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ItemStatus {
    Pending,
    Queued,
    Running,
    Succeeded,
    Failed,
    NeedsReview,
    Cancelled,
}

/// Who asks for a transition: the legal set differs between the engine and an operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Actor {
    Engine,
    Operator,
}

impl ItemStatus {
    pub const ALL: [ItemStatus; 7] = [
        ItemStatus::Pending,
        ItemStatus::Queued,
        ItemStatus::Running,
        ItemStatus::Succeeded,
        ItemStatus::Failed,
        ItemStatus::NeedsReview,
        ItemStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ItemStatus::Pending => "pending",
            ItemStatus::Queued => "queued",
            ItemStatus::Running => "running",
            ItemStatus::Succeeded => "succeeded",
            ItemStatus::Failed => "failed",
            ItemStatus::NeedsReview => "needs_review",
            ItemStatus::Cancelled => "cancelled",
        }
    }

    /// One byte per status, used in storage index keys.
    pub fn code(self) -> u8 {
        match self {
            ItemStatus::Pending => 0,
            ItemStatus::Queued => 1,
            ItemStatus::Running => 2,
            ItemStatus::Succeeded => 3,
            ItemStatus::Failed => 4,
            ItemStatus::NeedsReview => 5,
            ItemStatus::Cancelled => 6,
        }
    }

    /// Still owes work: the job is not complete while any item is in one of these.
    pub fn is_open(self) -> bool {
        matches!(
            self,
            ItemStatus::Pending | ItemStatus::Queued | ItemStatus::Running
        )
    }

    /// The legal-transition table. Everything not listed is refused.
    pub fn can_transition(self, to: ItemStatus, actor: Actor) -> bool {
        use ItemStatus::*;
        match actor {
            Actor::Engine => matches!(
                (self, to),
                (Pending, Queued)
                    | (Pending, Cancelled)
                    | (Queued, Running)
                    | (Queued, Cancelled)
                    | (Running, Succeeded)
                    | (Running, Failed)
                    | (Running, NeedsReview)
                    | (Running, Queued)
                    | (Running, Cancelled)
                    | (Failed, Queued)
                    | (NeedsReview, Queued)
                    | (NeedsReview, Cancelled)
            ),
            // An operator never claims or completes work by hand: that is what
            // workers and their leases are for.
            Actor::Operator => matches!(
                (self, to),
                (Pending, Cancelled)
                    | (Queued, Cancelled)
                    | (Running, Cancelled)
                    | (Failed, Queued)
                    | (Failed, Cancelled)
                    | (NeedsReview, Queued)
                    | (NeedsReview, Failed)
                    | (NeedsReview, Cancelled)
            ),
        }
    }
}

impl fmt::Display for ItemStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown status `{0}`")]
pub struct UnknownStatus(pub String);

impl FromStr for ItemStatus {
    type Err = UnknownStatus;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ItemStatus::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| UnknownStatus(s.to_owned()))
    }
}

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Enum)]
#[serde(rename_all = "snake_case")]
#[oai(rename_all = "snake_case")]
#[non_exhaustive]
pub enum JobStatus {
    Pending,
    Running,
    Paused,
    Completed,
    Cancelled,
}

impl JobStatus {
    pub const ALL: [JobStatus; 5] = [
        JobStatus::Pending,
        JobStatus::Running,
        JobStatus::Paused,
        JobStatus::Completed,
        JobStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Pending => "pending",
            JobStatus::Running => "running",
            JobStatus::Paused => "paused",
            JobStatus::Completed => "completed",
            JobStatus::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for JobStatus {
    type Err = UnknownStatus;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobStatus::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| UnknownStatus(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::ItemStatus::*;
    use super::*;

    #[test]
    fn status_names_round_trip() {
        for st in ItemStatus::ALL {
            assert_eq!(st.to_string().parse::<ItemStatus>(), Ok(st));
        }
        for st in JobStatus::ALL {
            assert_eq!(st.to_string().parse::<JobStatus>(), Ok(st));
        }
        assert!("done".parse::<ItemStatus>().is_err());
    }

    #[test]
    fn legal_transition_table() {
        // The whole table, row by row: (from, to, engine may, operator may).
        let table = [
            (Pending, Queued, true, false),
            (Pending, Running, false, false),
            (Pending, Cancelled, true, true),
            (Queued, Running, true, false),
            (Queued, Succeeded, false, false),
            (Queued, Cancelled, true, true),
            (Running, Succeeded, true, false),
            (Running, Failed, true, false),
            (Running, NeedsReview, true, false),
            (Running, Queued, true, false),
            (Running, Cancelled, true, true),
            (Running, Pending, false, false),
            (Succeeded, Queued, false, false),
            (Succeeded, Failed, false, false),
            (Failed, Queued, true, true),
            (Failed, Cancelled, false, true),
            (Failed, Succeeded, false, false),
            (NeedsReview, Queued, true, true),
            (NeedsReview, Failed, false, true),
            (NeedsReview, Cancelled, true, true),
            (NeedsReview, Succeeded, false, false),
            (Cancelled, Queued, false, false),
            (Cancelled, Running, false, false),
        ];
        for (from, to, engine, operator) in table {
            assert_eq!(
                from.can_transition(to, Actor::Engine),
                engine,
                "{from} -> {to} (engine)"
            );
            assert_eq!(
                from.can_transition(to, Actor::Operator),
                operator,
                "{from} -> {to} (operator)"
            );
        }
        // Nothing ever leaves a final status, and nothing goes back to pending.
        for to in ItemStatus::ALL {
            for actor in [Actor::Engine, Actor::Operator] {
                assert!(!Succeeded.can_transition(to, actor));
                assert!(!Cancelled.can_transition(to, actor));
                for from in ItemStatus::ALL {
                    assert!(!from.can_transition(Pending, actor));
                }
            }
        }
    }
}
