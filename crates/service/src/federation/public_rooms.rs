//! The public room directory across servers (spec: Server-Server API, "Public Room
//! Directory"): this server's published rooms for others (`GET`/`POST
//! /_matrix/federation/v1/publicRooms`, unless `federation.publish_room_directory` is off), and
//! another server's directory for a local client (`/publicRooms?server=…`).
//!
//! Third-party networks are not bridged here: their parameters are ignored both ways.

use std::time::Duration;

use rhizome_core::{Error, Result};
use ruma::{
    OwnedServerName, ServerName, UInt,
    api::federation::directory::{get_public_rooms, get_public_rooms_filtered},
    directory::{Filter, PublicRoomsChunk, RoomTypeFilter},
};

use super::RequestLimits;
use crate::{
    Services,
    rooms::directory::{DirectoryQuery, PublicRoomsPage, RoomSummary},
};

/// The most rooms asked of another server at once.
const MAX_REMOTE_LIMIT: usize = 500;
/// The largest directory answer read from another server.
const MAX_REMOTE_RESPONSE: usize = 4 * 1024 * 1024;
/// How long a query of another server's directory may take.
const REMOTE_TIMEOUT: Duration = Duration::from_secs(20);

/// What this server shows of another server's directory entry.
fn summary_of_chunk(chunk: PublicRoomsChunk) -> RoomSummary {
    RoomSummary {
        room_id: chunk.room_id,
        name: chunk.name,
        topic: chunk.topic,
        canonical_alias: chunk.canonical_alias,
        avatar_url: chunk.avatar_url.map(|url| url.to_string()),
        joined_members: u64::from(chunk.num_joined_members),
        world_readable: chunk.world_readable,
        guest_can_join: chunk.guest_can_join,
        join_rule: Some(chunk.join_rule.as_str().to_owned()),
        allowed_room_ids: Vec::new(),
        room_type: chunk.room_type.map(|kind| kind.to_string()),
        room_version: None,
        encryption: None,
    }
}

/// The federation filter of a directory query.
fn filter_of(query: &DirectoryQuery) -> Filter {
    let mut filter = Filter::new();
    filter.generic_search_term = query.search_term.clone().filter(|term| !term.is_empty());
    filter.room_types = query.room_types.iter().cloned().map(RoomTypeFilter::from).collect();
    filter
}

/// A remote server's page, kept to the limit asked for.
fn remote_page(
    chunk: Vec<PublicRoomsChunk>,
    next_batch: Option<String>,
    prev_batch: Option<String>,
    total: Option<UInt>,
    limit: usize,
) -> PublicRoomsPage {
    let chunk: Vec<RoomSummary> = chunk.into_iter().take(limit).map(summary_of_chunk).collect();
    let total = total.map_or(chunk.len() as u64, u64::from);
    PublicRoomsPage { chunk, next_batch, prev_batch, total }
}

impl Services {
    /// A page of the public directory of this server (`server` `None` or this server's name)
    /// or, asked over federation, of another.
    pub async fn public_rooms_of(
        &self,
        server: Option<&ServerName>,
        query: &DirectoryQuery,
    ) -> Result<PublicRoomsPage> {
        match server {
            Some(server) if server != self.server_name() => {
                self.remote_public_rooms(server, query).await
            }
            _ => self.public_rooms(query).await,
        }
    }

    /// This server's directory as another server may read it: `M_FORBIDDEN` when
    /// `federation.publish_room_directory` is off.
    pub async fn public_rooms_for_server(
        &self,
        origin: &ServerName,
        query: &DirectoryQuery,
    ) -> Result<PublicRoomsPage> {
        if !self.config.federation.publish_room_directory {
            tracing::debug!(%origin, "refused the room directory to another server");
            return Err(Error::forbidden(
                "This server does not publish its room directory to other servers",
            ));
        }
        self.public_rooms(query).await
    }

    /// Another server's directory, by `GET` (plain paging) or `POST` (with a filter).
    async fn remote_public_rooms(
        &self,
        server: &ServerName,
        query: &DirectoryQuery,
    ) -> Result<PublicRoomsPage> {
        let client = self.federation_client()?;
        let limits = RequestLimits::small()
            .with_max_body_bytes(MAX_REMOTE_RESPONSE)
            .with_timeout(REMOTE_TIMEOUT);
        let limit = query.limit.unwrap_or(MAX_REMOTE_LIMIT).clamp(1, MAX_REMOTE_LIMIT);
        let wire_limit = Some(UInt::new_saturating(limit as u64));
        let destination: OwnedServerName = server.to_owned();
        let page = if query.filters() {
            let mut request = get_public_rooms_filtered::v1::Request::new();
            request.limit = wire_limit;
            request.since = query.since.clone();
            request.filter = filter_of(query);
            let response = client.send_with_limits(&destination, request, limits).await?;
            remote_page(
                response.chunk,
                response.next_batch,
                response.prev_batch,
                response.total_room_count_estimate,
                limit,
            )
        } else {
            let mut request = get_public_rooms::v1::Request::new();
            request.limit = wire_limit;
            request.since = query.since.clone();
            let response = client.send_with_limits(&destination, request, limits).await?;
            remote_page(
                response.chunk,
                response.next_batch,
                response.prev_batch,
                response.total_room_count_estimate,
                limit,
            )
        };
        Ok(page)
    }
}

#[cfg(test)]
mod tests {
    use ruma::{OwnedRoomId, directory::PublicRoomsChunkInit, room::RoomType};

    use super::*;

    fn chunk(room: &str) -> PublicRoomsChunk {
        let mut chunk: PublicRoomsChunk = PublicRoomsChunkInit {
            num_joined_members: UInt::from(3u32),
            room_id: OwnedRoomId::try_from(room).unwrap(),
            world_readable: true,
            guest_can_join: false,
        }
        .into();
        chunk.room_type = Some(RoomType::Space);
        chunk
    }

    #[test]
    fn remote_pages_keep_to_the_limit_and_their_tokens() {
        let page = remote_page(
            vec![chunk("!a:x"), chunk("!b:x"), chunk("!c:x")],
            Some("next".to_owned()),
            None,
            None,
            2,
        );
        assert_eq!(page.chunk.len(), 2);
        assert_eq!(page.chunk[0].room_type.as_deref(), Some("m.space"));
        assert_eq!(page.chunk[0].join_rule.as_deref(), Some("public"));
        assert_eq!(page.next_batch.as_deref(), Some("next"));
        assert_eq!(page.total, 2);
    }

    #[test]
    fn filters_carry_the_term_and_types() {
        let query = DirectoryQuery {
            search_term: Some("garden".to_owned()),
            room_types: vec![None, Some("m.space".to_owned())],
            ..DirectoryQuery::default()
        };
        let filter = filter_of(&query);
        assert_eq!(filter.generic_search_term.as_deref(), Some("garden"));
        assert_eq!(filter.room_types, vec![RoomTypeFilter::Default, RoomTypeFilter::Space]);
        assert!(filter_of(&DirectoryQuery::default()).is_empty());
    }
}
