//! [`SearchActor`]: a thin shell over the search engine ([`crate::search::Session`]), which
//! holds every rule (request ids, the retry, the timeouts, the model fallback, server-ranked
//! chunks, fleet answers, thumbnail URLs). A message becomes one `Session` call; the shell
//! carries out the [`Effect`]s it returns, in order: publishes through the link, timers with
//! `send_after`, rankings, "more like this", near-duplicate groups and exports on a blocking
//! thread through the [`CatalogReader`] (the result comes back as a message), the best match's
//! thumbnail on a task of its own, and answers to in-process callers.
//!
//! The handler never waits: no search waits for the index actor or for another search.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use bytes::Bytes;
use edgeclip_link::LinkMsg;
use edgeclip_messages::dashboard::{SearchRequest, SearchResponse};
use edgeclip_messages::request_id::RequestIds;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::watch;
use tracing::warn;

use crate::error::DeviceError;
use crate::index::{CatalogReader, Duplicates, Export, Models, Ranking};
use crate::preprocess::DecodeLimits;
use crate::search::{Effect, IndexError, SearchId, Session, SessionConfig, Timer};

/// Messages of the search actor.
pub enum SearchMsg {
    /// A payload from the device's search topic (text or JSON).
    Payload(Bytes),
    /// A search from inside the process; the answer also goes to the results topic.
    Search(SearchRequest, Option<RpcReplyPort<SearchResponse>>),
    /// A payload from the cloud reply topic.
    CloudReply(Bytes),
    /// A payload from the device's fleet query topic: a fleet search's text vector.
    FleetQuery(Bytes),
    /// A timer the session asked for.
    Timer(Timer),
    /// A ranking or "more like this" made off the actor.
    Ranked(SearchId, Result<Ranking, IndexError>),
    /// Near-duplicate groups made off the actor.
    Grouped(SearchId, Result<Duplicates, IndexError>),
    /// The export of a server-ranked search, made off the actor.
    Exported(SearchId, Result<Export, IndexError>),
}

/// How the best match's thumbnail is made when the session asks for it
/// ([`SessionConfig::best_image`]).
#[derive(Debug, Clone, Copy)]
pub struct Thumbnails {
    /// Longest side of the thumbnail.
    pub side: u32,
    /// Decoder bounds for the picture.
    pub limits: DecodeLimits,
}

/// Arguments of the search actor.
pub struct SearchArgs {
    /// The session's device, limits and timeouts.
    pub session: SessionConfig,
    /// Model ids of the indexes, kept up to date by the index actor.
    pub models: watch::Receiver<Models>,
    /// The MQTT link.
    pub link: ActorRef<LinkMsg>,
    /// The indexes, read directly.
    pub catalog: CatalogReader,
    /// How the best match's thumbnail is made.
    pub thumbnails: Thumbnails,
}

/// State of the search actor.
pub struct SearchState {
    session: Session,
    models: watch::Receiver<Models>,
    /// In-process callers waiting for their search's answer.
    callers: HashMap<SearchId, RpcReplyPort<SearchResponse>>,
    link: ActorRef<LinkMsg>,
    catalog: CatalogReader,
    /// The latest best match to thumbnail: (picture, topic).
    best: watch::Sender<Option<(String, String)>>,
}

/// The search actor.
pub struct SearchActor;

impl Actor for SearchActor {
    type Msg = SearchMsg;
    type State = SearchState;
    type Arguments = SearchArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<SearchMsg>,
        mut args: SearchArgs,
    ) -> Result<SearchState, ActorProcessingErr> {
        let models = args.models.borrow_and_update().clone();
        Ok(SearchState {
            session: Session::new(args.session, models, RequestIds::from_clock()),
            models: args.models,
            callers: HashMap::new(),
            best: thumbnailer(args.link.clone(), args.thumbnails),
            link: args.link,
            catalog: args.catalog,
        })
    }

    async fn handle(
        &self,
        me: ActorRef<SearchMsg>,
        msg: SearchMsg,
        st: &mut SearchState,
    ) -> Result<(), ActorProcessingErr> {
        if st.models.has_changed().unwrap_or(false) {
            st.session.set_models(st.models.borrow_and_update().clone());
        }
        let now = Instant::now();
        let effects = match msg {
            SearchMsg::Payload(bytes) => st.session.payload(&bytes, now),
            SearchMsg::Search(request, port) => {
                let (search, effects) = st.session.search(request, now);
                if let Some(port) = port {
                    st.callers.insert(search, port);
                }
                effects
            }
            SearchMsg::CloudReply(bytes) => st.session.cloud_reply(&bytes, now),
            SearchMsg::FleetQuery(bytes) => st.session.fleet_query(&bytes),
            SearchMsg::Timer(timer) => st.session.fire(timer),
            SearchMsg::Ranked(search, result) => st.session.ranked(search, result, now),
            SearchMsg::Grouped(search, result) => st.session.grouped(search, result, now),
            SearchMsg::Exported(search, result) => st.session.exported(search, result, now),
        };
        for effect in effects {
            run(&me, st, effect);
        }
        Ok(())
    }
}

/// Carries out one effect of the session.
fn run(me: &ActorRef<SearchMsg>, st: &mut SearchState, effect: Effect) {
    let catalog = &st.catalog;
    match effect {
        Effect::Publish {
            topic,
            frame,
            retain,
        } => edgeclip_link::publish(&st.link, topic, Vec::from(frame), retain),
        Effect::Schedule { after, timer } => {
            me.send_after(after, move || SearchMsg::Timer(timer));
        }
        Effect::Rank {
            search,
            query,
            k,
            filter,
        } => off_actor(
            me,
            catalog,
            move |catalog| query.rank(catalog, k, &filter),
            move |ranked| SearchMsg::Ranked(search, ranked),
        ),
        Effect::Like {
            search,
            picture,
            k,
            filter,
        } => off_actor(
            me,
            catalog,
            move |catalog| catalog.like(Path::new(&picture), k, &filter),
            move |ranked| SearchMsg::Ranked(search, ranked),
        ),
        Effect::Duplicates {
            search,
            threshold,
            k,
            filter,
            max,
        } => off_actor(
            me,
            catalog,
            move |catalog| catalog.duplicates(threshold, k, &filter, max),
            move |grouped| SearchMsg::Grouped(search, grouped),
        ),
        Effect::Export {
            search,
            filter,
            chunk_vectors,
            max_vectors,
        } => off_actor(
            me,
            catalog,
            move |catalog| catalog.export(&filter, chunk_vectors, max_vectors),
            move |exported| SearchMsg::Exported(search, exported),
        ),
        Effect::PublishThumbnail { path, topic } => {
            st.best.send_replace(Some((path, topic)));
        }
        Effect::Answer { search, response } => {
            if let Some(port) = st.callers.remove(&search) {
                let _ = port.send(response);
            }
        }
    }
}

/// Runs `work` (reads of the catalog, under its read lock) on a blocking thread and sends the
/// message `then` makes of its result back to the actor, which meanwhile handles others.
fn off_actor<T: Send + 'static>(
    me: &ActorRef<SearchMsg>,
    catalog: &CatalogReader,
    work: impl FnOnce(&CatalogReader) -> Result<T, DeviceError> + Send + 'static,
    then: impl FnOnce(Result<T, IndexError>) -> SearchMsg + Send + 'static,
) {
    let (me, catalog) = (me.clone(), catalog.clone());
    tokio::spawn(async move {
        let result = match tokio::task::spawn_blocking(move || work(&catalog)).await {
            Ok(result) => result.map_err(IndexError::from),
            Err(e) => Err(IndexError::NoAnswer(e.to_string())),
        };
        let _ = me.cast(then(result));
    });
}

/// Starts the task that reads and thumbnails the best match and publishes it (retained), one
/// picture at a time on a blocking thread: a best match that comes while one is being made
/// replaces any still waiting (the topic keeps only the latest), so a burst of searches
/// never queues decodes. The task ends with the actor (its sender dropped).
fn thumbnailer(
    link: ActorRef<LinkMsg>,
    how: Thumbnails,
) -> watch::Sender<Option<(String, String)>> {
    let (best, mut latest) = watch::channel(None::<(String, String)>);
    tokio::spawn(async move {
        while latest.changed().await.is_ok() {
            let Some((path, topic)) = latest.borrow_and_update().clone() else {
                continue;
            };
            let made = tokio::task::spawn_blocking(move || {
                let bytes = std::fs::read(&path).map_err(|e| format!("{path}: {e}"))?;
                crate::thumb::make_thumbnail(&bytes, how.side, how.limits)
                    .map_err(|e| format!("{path}: {e}"))
            })
            .await;
            match made {
                Ok(Ok(jpeg)) => edgeclip_link::publish(&link, topic, jpeg, true),
                Ok(Err(e)) => warn!(error = %e, "best match thumbnail not published"),
                Err(e) => warn!(error = %e, "best match thumbnail failed"),
            }
        }
    });
    best
}
