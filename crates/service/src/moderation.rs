//! Reports: users report events and rooms to the server's administrator, who lists and
//! resolves them (`rhizome admin reports …`). A report keeps who reported what, where, why and
//! when, never a copy of the reported content: the administrator looks at the room.

use rhizome_core::{Error, Result, clock::now_millis};
use rhizome_storage::{NewReport, ReportRecord};
use ruma::{EventId, RoomId};

use crate::{Requester, Services, rate_limit::Action};

/// The longest reason kept, in characters; longer ones are cut.
pub const MAX_REASON_CHARS: usize = 1000;

fn clean_reason(reason: Option<&str>) -> Option<String> {
    let reason = reason?.trim();
    (!reason.is_empty()).then(|| reason.chars().take(MAX_REASON_CHARS).collect())
}

impl Services {
    /// Reports an event of a room the requester is joined to and may see the event in;
    /// `M_NOT_FOUND` otherwise, as for an unknown event.
    pub async fn report_event(
        &self,
        requester: &Requester,
        room_id: &RoomId,
        event_id: &EventId,
        reason: Option<&str>,
        score: Option<i64>,
    ) -> Result<i64> {
        self.rate_limiter.check(Action::Message, requester.user_id.as_str())?;
        let not_found =
            || Error::not_found("The event was not found or you are not joined to the room");
        if !self.is_joined(room_id, &requester.user_id).await? {
            return Err(not_found());
        }
        let event = self.load_event(event_id).await?.ok_or_else(not_found)?;
        if event.pdu.room_id != room_id || !self.can_see_event(&requester.user_id, &event).await? {
            return Err(not_found());
        }
        self.add_report(requester, room_id, Some(event_id), reason, score).await
    }

    /// Reports a room (the requester need not be in it); `M_NOT_FOUND` for unknown rooms.
    pub async fn report_room(
        &self,
        requester: &Requester,
        room_id: &RoomId,
        reason: Option<&str>,
    ) -> Result<i64> {
        self.rate_limiter.check(Action::Message, requester.user_id.as_str())?;
        if !self.room_exists(room_id).await? {
            return Err(Error::not_found("The room was not found"));
        }
        self.add_report(requester, room_id, None, reason, None).await
    }

    async fn add_report(
        &self,
        requester: &Requester,
        room_id: &RoomId,
        event_id: Option<&EventId>,
        reason: Option<&str>,
        score: Option<i64>,
    ) -> Result<i64> {
        let report_id = self
            .store
            .add_report(&NewReport {
                reporter: requester.user_id.clone(),
                room_id: room_id.to_owned(),
                event_id: event_id.map(ToOwned::to_owned),
                reason: clean_reason(reason),
                score,
                received_ts: now_millis(),
            })
            .await?;
        tracing::info!(report_id, "a user made a report for the administrator");
        Ok(report_id)
    }

    /// Reports for the administrator: the open ones, or all.
    pub async fn reports(&self, include_resolved: bool) -> Result<Vec<ReportRecord>> {
        self.store.list_reports(include_resolved).await
    }

    /// Resolves a report; `M_NOT_FOUND` if there is no open report of that number.
    pub async fn resolve_report(&self, report_id: i64) -> Result<()> {
        if self.store.resolve_report(report_id, now_millis()).await? {
            Ok(())
        } else {
            Err(Error::not_found("No open report of that number"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_trimmed_and_cut() {
        assert_eq!(clean_reason(None), None);
        assert_eq!(clean_reason(Some("  ")), None);
        assert_eq!(clean_reason(Some(" spam ")).as_deref(), Some("spam"));
        let long = "é".repeat(MAX_REASON_CHARS + 5);
        assert_eq!(clean_reason(Some(&long)).unwrap().chars().count(), MAX_REASON_CHARS);
    }
}
