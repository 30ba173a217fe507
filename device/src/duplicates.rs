//! Near-duplicate groups: pictures whose vectors are at least `threshold` alike (cosine of
//! unit vectors), joined transitively (single linkage: the connected components of the
//! "at least this alike" graph, so a chain a~b~c is one group even if a and c are less alike).
//!
//! Every pair is compared once, O(n²) dot products: the caller bounds n (the device refuses
//! more than `search.max_duplicate_pictures` and asks for a narrower filter).

use crate::rank::dot;

/// A group: rows of the input, and each row's best cosine with another member.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    /// (row, best cosine with another member of the group), best first.
    pub members: Vec<(usize, f32)>,
}

/// Groups of at least two of the `n` unit vectors of dimension `dim` laid out row after row in
/// `flat`, whose cosine is at least `threshold`. Largest groups first, then the most alike.
/// A `flat` whose length is not `n * dim` (or `dim == 0`) gives no groups.
pub fn groups(flat: &[f32], dim: usize, threshold: f32) -> Vec<Group> {
    if dim == 0 || flat.len() % dim != 0 {
        return Vec::new();
    }
    let n = flat.len() / dim;
    let row = |i: usize| &flat[i * dim..(i + 1) * dim];
    let mut parent: Vec<usize> = (0..n).collect();
    let mut best = vec![f32::NEG_INFINITY; n];
    for i in 0..n {
        for j in i + 1..n {
            let cos = dot(row(i), row(j));
            if cos >= threshold {
                best[i] = best[i].max(cos);
                best[j] = best[j].max(cos);
                let (a, b) = (find(&mut parent, i), find(&mut parent, j));
                if a != b {
                    parent[a.max(b)] = a.min(b);
                }
            }
        }
    }
    let mut by_root: std::collections::BTreeMap<usize, Vec<(usize, f32)>> = Default::default();
    for (i, &cos) in best.iter().enumerate() {
        if cos > f32::NEG_INFINITY {
            let root = find(&mut parent, i);
            by_root.entry(root).or_default().push((i, cos));
        }
    }
    let mut out: Vec<Group> = by_root
        .into_values()
        .map(|mut members| {
            members.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            Group { members }
        })
        .collect();
    out.sort_by(|a, b| {
        b.members
            .len()
            .cmp(&a.members.len())
            .then(b.members[0].1.total_cmp(&a.members[0].1))
            .then(a.members[0].0.cmp(&b.members[0].0))
    });
    out
}

fn find(parent: &mut [usize], mut i: usize) -> usize {
    while parent[i] != i {
        parent[i] = parent[parent[i]];
        i = parent[i];
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(angle_deg: f32) -> [f32; 2] {
        let r = angle_deg.to_radians();
        [r.cos(), r.sin()]
    }

    fn flat(angles: &[f32]) -> Vec<f32> {
        angles.iter().flat_map(|&a| unit(a)).collect()
    }

    fn rows(groups: &[Group]) -> Vec<Vec<usize>> {
        groups
            .iter()
            .map(|g| {
                let mut r: Vec<usize> = g.members.iter().map(|m| m.0).collect();
                r.sort();
                r
            })
            .collect()
    }

    #[test]
    fn alike_vectors_are_grouped_largest_first_and_loners_left_out() {
        // cos(5°) = 0.996, cos(40°) = 0.77
        let v = flat(&[0.0, 90.0, 3.0, 180.0, 92.0, 5.0, 250.0]);
        let g = groups(&v, 2, 0.99);
        assert_eq!(rows(&g), vec![vec![0, 2, 5], vec![1, 4]]);
        assert!(g[0].members.iter().all(|m| m.1 >= 0.99));
        // Best-matched member first: 2 is 2-3° from both others.
        assert_eq!(g[0].members[0].0, 2);
        assert!(groups(&v, 2, 0.9999).is_empty());
    }

    #[test]
    fn groups_are_transitive_chains() {
        // 0~4 and 4~8 are within 5°, 0 and 8 are not: single linkage puts all three together.
        let g = groups(&flat(&[0.0, 4.0, 8.0]), 2, (5.0f32).to_radians().cos());
        assert_eq!(rows(&g), vec![vec![0, 1, 2]]);
    }

    #[test]
    fn ties_in_size_go_to_the_most_alike_and_bad_input_gives_nothing() {
        let g = groups(&flat(&[0.0, 4.0, 90.0, 91.0]), 2, 0.99);
        assert_eq!(rows(&g), vec![vec![2, 3], vec![0, 1]]);
        assert!(groups(&[1.0, 0.0, 1.0], 2, 0.5).is_empty());
        assert!(groups(&[], 2, 0.5).is_empty());
        assert!(groups(&[1.0], 0, 0.5).is_empty());
        let same = flat(&[10.0, 10.0]);
        assert_eq!(rows(&groups(&same, 2, 1.0 - 1e-6)), vec![vec![0, 1]]);
    }
}
