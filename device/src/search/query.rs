//! [`Query`]: a validated frame from the cloud that carries a text vector, ranked in place.
//!
//! It lives with the search rather than with the index: it is the cloud protocol's frame
//! (the reply to an encode request, or a fleet query), which the session decodes, checks and
//! decides to rank. The index reader ranks a model's `&[f32]` and knows nothing of frames;
//! [`Query::rank`] lends it the vector straight from the received archive.

use edgeclip_messages::wire::{
    validate_vector, vector_view, ArchivedReplyBody, ArchivedTextVector, EncodeReply, FleetQuery,
    Received,
};
use edgeclip_messages::Filter;

use super::failure::Failure;
use crate::error::DeviceError;
use crate::index::{CatalogReader, Ranking};

/// A frame from the cloud holding a text vector: the reply to this device's own encode
/// request, or a fleet query (the vector of a fleet search, encoded once for every device).
/// Ranked where it was received: no copy, no deserialisation (see [`vector_view`]).
#[derive(Debug)]
pub enum Query {
    /// The cloud's reply to the device's encode request.
    Encoded(Received<EncodeReply>),
    /// A fleet search's vector.
    Fleet(Received<FleetQuery>),
}

impl Query {
    /// The cloud's reply to an encode request, if it holds a vector that can be ranked; the
    /// cloud's refusal, or why its vector cannot be ranked, otherwise.
    pub fn encoded(reply: Received<EncodeReply>) -> Result<Query, Failure> {
        match &reply.get().body {
            ArchivedReplyBody::Error(refusal) => return Err(Failure::cloud_refused(refusal)),
            ArchivedReplyBody::Vector(v) => {
                validate_vector(&vector_view(&v.vector)).map_err(Failure::UnusableVector)?
            }
        }
        Ok(Query::Encoded(reply))
    }

    /// The text vector and its model, read in place (None if the reply holds an error).
    pub fn text_vector(&self) -> Option<&ArchivedTextVector> {
        match self {
            Query::Encoded(reply) => match &reply.get().body {
                ArchivedReplyBody::Vector(v) => Some(v),
                ArchivedReplyBody::Error(_) => None,
            },
            Query::Fleet(query) => Some(&query.get().vector),
        }
    }

    /// The `k` pictures most like the vector that `filter` keeps, ranked by the index of the
    /// vector's model (see [`crate::index::Indexes::for_model`]) directly on the received
    /// archive. Blocks on the catalog's read lock and ranks every vector: call it on a
    /// blocking thread.
    pub fn rank(
        &self,
        catalog: &CatalogReader,
        k: usize,
        filter: &Filter,
    ) -> Result<Ranking, DeviceError> {
        let Some(text) = self.text_vector() else {
            return Err(DeviceError::Search(
                "the cloud's reply holds no vector".into(),
            ));
        };
        catalog.rank(text.model.as_str(), &vector_view(&text.vector), k, filter)
    }
}
