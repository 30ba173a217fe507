//! Server-side ranking (method B): scores a chunk of a device's int8-quantised vectors against
//! a text vector and keeps the best `k`.

use edgeclip_messages::wire::{dot_quantised, ArchivedRankRequest};

/// The `k` best (id, score) of the chunk, best first; ties go to the lower id.
pub fn rank_chunk(query: &[f32], request: &ArchivedRankRequest) -> (Vec<u32>, Vec<f32>) {
    let dim = request.dim.to_native() as usize;
    let k = request.k.to_native() as usize;
    let codes: &[i8] = request.codes.as_slice();
    let mut scored: Vec<(u32, f32)> = request
        .ids
        .iter()
        .zip(request.scales.iter())
        .zip(codes.chunks_exact(dim.max(1)))
        .map(|((id, scale), c)| (id.to_native(), dot_quantised(query, scale.to_native(), c)))
        .filter(|(_, s)| !s.is_nan())
        .collect();
    scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    scored.truncate(k);
    scored.into_iter().unzip()
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgeclip_messages::wire::{encode, quantise, RankRequest, Received};

    #[test]
    fn ranks_a_chunk_best_first() {
        let vectors = [[1.0f32, 0.0], [0.0, 1.0], [0.6, 0.8]];
        let (mut codes, mut scales) = (Vec::new(), Vec::new());
        for v in &vectors {
            scales.push(quantise(v, &mut codes));
        }
        let request = RankRequest {
            request_id: 1,
            reply_to: "edgeclip/d/cloud/reply".into(),
            model: "m".into(),
            text: "t".into(),
            lang: None,
            k: 2,
            chunk: 0,
            chunks: 1,
            dim: 2,
            ids: vec![10, 20, 30],
            scales,
            codes,
        };
        let frame = Received::<RankRequest>::decode(&encode(&request).unwrap(), 1 << 20).unwrap();
        let (ids, scores) = rank_chunk(&[0.0, 1.0], frame.get());
        assert_eq!(ids, vec![20, 30]);
        assert!((scores[0] - 1.0).abs() < 0.01 && (scores[1] - 0.8).abs() < 0.01);
    }
}
