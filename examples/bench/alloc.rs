//! A counting global allocator, and the check that the device ranks a received text vector
//! straight from the received buffer: the frame is copied once into an aligned buffer (the
//! documented copy, `wire::Received`), the vector is viewed in place (`vector_view`), and
//! ranking allocates nothing of the vector's size.

use std::alloc::{GlobalAlloc, Layout, System};
use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use edgeclip_device::index::{Entry, Index};
use edgeclip_messages::wire::{self, vector_view, EncodeReply, Received, ReplyBody, TextVector};
use serde_json::{json, Value};

/// The system allocator, counting allocations and bytes.
pub struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; the counters are atomics.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(new_size as u64, Ordering::Relaxed);
        // SAFETY: forwarded unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// (allocations, bytes) made while running `f` (on this thread; run before other threads start).
fn counted<T>(f: impl FnOnce() -> T) -> (T, u64, u64) {
    let (a0, b0) = (
        ALLOCATIONS.load(Ordering::SeqCst),
        BYTES.load(Ordering::SeqCst),
    );
    let out = f();
    let (a1, b1) = (
        ALLOCATIONS.load(Ordering::SeqCst),
        BYTES.load(Ordering::SeqCst),
    );
    (out, a1 - a0, b1 - b0)
}

/// Receives an encode reply carrying a `dim`-value vector and ranks `rows` f32 vectors with
/// it through the device's own functions, counting allocations at each step.
pub fn zero_copy(dim: usize, rows: usize) -> anyhow::Result<Value> {
    let model = "bench@0";
    let mut index = Index::new(model, dim);
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    for i in 0..rows {
        let v: Vec<f32> = (0..dim)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
            })
            .collect();
        let entry = Entry {
            path: PathBuf::from(format!("/p/{i}.jpg")),
            size: 1,
            mtime_ns: 0,
            hash: [0; 32],
            width: 1,
            height: 1,
            taken_s: 0,
            source: Box::default(),
        };
        index.upsert(entry, &v)?;
    }
    let query: Vec<f32> = (0..dim).map(|i| ((i as f32) * 0.37).sin()).collect();
    let reply = EncodeReply {
        request_id: 7,
        body: ReplyBody::Vector(TextVector {
            model: model.into(),
            vector: query,
        }),
    };
    let payload = wire::encode(&reply)?;
    let (received, decode_allocs, decode_bytes) =
        counted(|| Received::<EncodeReply>::decode(&payload, 1 << 20));
    let received = received?;
    let wire::ArchivedReplyBody::Vector(text) = &received.get().body else {
        anyhow::bail!("encoded a vector, got no vector back")
    };
    let (view, view_allocs, view_bytes) = counted(|| vector_view(&text.vector));
    let borrowed = matches!(view, Cow::Borrowed(_));
    let archive = received.get() as *const _ as usize;
    let in_buffer = (view.as_ptr() as usize) >= archive.saturating_sub(payload.len())
        && (view.as_ptr() as usize) < archive + payload.len();
    let (hits, rank_allocs, rank_bytes) = counted(|| index.search(model, &view, 10));
    let hits = hits?.len();
    Ok(json!({
        "dim": dim, "rows": rows, "vector_bytes": dim * 4, "payload_bytes": payload.len(),
        "decode": {"allocations": decode_allocs, "bytes": decode_bytes,
                   "note": "Received::decode: one copy of the archive into a 16-byte-aligned buffer, then bytecheck validation"},
        "vector_view": {"allocations": view_allocs, "bytes": view_bytes, "borrowed": borrowed, "points_into_received_buffer": in_buffer},
        "rank_top10": {"allocations": rank_allocs, "bytes": rank_bytes, "hits": hits,
                       "note": "Index::search on the borrowed view: the top-k heap and the hit list only"},
    }))
}
