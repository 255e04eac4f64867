//! Go's `container/heap` and `sort.Sort`, replayed comparison for comparison.
//!
//! Why this exists: Prometheus's `topk`/`bottomk` keep each group's k best samples in a
//! Go heap (replacing the root only on a strictly better value), then order the heap with
//! `sort.Sort`, which is pattern-defeating quicksort and not stable. When several series
//! share a value, *which* of them survive and the order they come out in are decided by
//! exactly which comparisons and swaps those two algorithms make over the input order. A
//! stable sort keeps other series (seen as a range `topk(5, …)` returning 122 series where
//! Prometheus returns 123). Replaying the same steps — same sift order, same pivots, the
//! same seeded shuffle when partitions go unbalanced — gives the same series for ties.
//!
//! `less` is Go's `Less(i, j)` applied to the elements at `i` and `j`. It need not be a
//! strict weak order (Prometheus's treats NaN as less than everything, including NaN);
//! the replay stays faithful because it asks exactly the questions Go asks.

/// `heap.Push`: append, then sift the new element up.
pub(crate) fn heap_push<T>(h: &mut Vec<T>, x: T, less: &impl Fn(&T, &T) -> bool) {
    h.push(x);
    let last = h.len() - 1;
    sift_up(h, last, less);
}

/// `heap.Fix`: restore the heap after the element at `i` changed.
pub(crate) fn heap_fix<T>(h: &mut [T], i: usize, less: &impl Fn(&T, &T) -> bool) {
    let n = h.len();
    if !sift_down_heap(h, i, n, less) {
        sift_up(h, i, less);
    }
}

/// container/heap's `up`.
fn sift_up<T>(h: &mut [T], mut j: usize, less: &impl Fn(&T, &T) -> bool) {
    while j > 0 {
        let parent = (j - 1) / 2;
        if !less(&h[j], &h[parent]) {
            break;
        }
        h.swap(parent, j);
        j = parent;
    }
}

/// container/heap's `down`; true when the element moved.
fn sift_down_heap<T>(h: &mut [T], i0: usize, n: usize, less: &impl Fn(&T, &T) -> bool) -> bool {
    let n = n.min(h.len());
    let mut i = i0;
    loop {
        let left = 2 * i + 1;
        if left >= n {
            break;
        }
        let mut child = left;
        if left + 1 < n && less(&h[left + 1], &h[left]) {
            child = left + 1;
        }
        if !less(&h[child], &h[i]) {
            break;
        }
        h.swap(i, child);
        i = child;
    }
    i > i0
}

/// `sort.Sort` (Go 1.19 and later: pdqsort over `sort.Interface`).
pub(crate) fn sort<T>(data: &mut [T], less: &impl Fn(&T, &T) -> bool) {
    let n = data.len();
    if n <= 1 {
        return;
    }
    pdqsort(data, 0, n, bit_len(n), less);
}

/// Go's `bits.Len`: the number of bits needed to represent `x`.
fn bit_len(x: usize) -> usize {
    (usize::BITS - x.leading_zeros()) as usize
}

#[derive(PartialEq, Eq, Clone, Copy)]
enum Hint {
    Unknown,
    Increasing,
    Decreasing,
}

fn insertion_sort<T>(d: &mut [T], a: usize, b: usize, less: &impl Fn(&T, &T) -> bool) {
    for i in a + 1..b {
        let mut j = i;
        while j > a && less(&d[j], &d[j - 1]) {
            d.swap(j, j - 1);
            j -= 1;
        }
    }
}

/// Max-heap sift over `d[first+lo .. first+hi]` (the heapsort fallback's own variant).
fn sift_down_sort<T>(
    d: &mut [T],
    lo: usize,
    hi: usize,
    first: usize,
    less: &impl Fn(&T, &T) -> bool,
) {
    let mut root = lo;
    loop {
        let mut child = 2 * root + 1;
        if child >= hi {
            return;
        }
        if child + 1 < hi && less(&d[first + child], &d[first + child + 1]) {
            child += 1;
        }
        if !less(&d[first + root], &d[first + child]) {
            return;
        }
        d.swap(first + root, first + child);
        root = child;
    }
}

fn heap_sort<T>(d: &mut [T], a: usize, b: usize, less: &impl Fn(&T, &T) -> bool) {
    let hi = b - a;
    if hi == 0 {
        return;
    }
    for i in (0..=(hi - 1) / 2).rev() {
        sift_down_sort(d, i, hi, a, less);
    }
    for i in (0..hi).rev() {
        d.swap(a, a + i);
        sift_down_sort(d, 0, i, a, less);
    }
}

fn pdqsort<T>(
    d: &mut [T],
    mut a: usize,
    mut b: usize,
    mut limit: usize,
    less: &impl Fn(&T, &T) -> bool,
) {
    const MAX_INSERTION: usize = 12;
    let mut was_balanced = true;
    let mut was_partitioned = true;
    loop {
        let length = b - a;
        if length <= MAX_INSERTION {
            insertion_sort(d, a, b, less);
            return;
        }
        if limit == 0 {
            heap_sort(d, a, b, less);
            return;
        }
        if !was_balanced {
            break_patterns(d, a, b);
            limit -= 1;
        }
        let (mut pivot, mut hint) = choose_pivot(d, a, b, less);
        if hint == Hint::Decreasing {
            reverse_range(d, a, b);
            pivot = (b - 1) - (pivot - a);
            hint = Hint::Increasing;
        }
        if was_balanced
            && was_partitioned
            && hint == Hint::Increasing
            && partial_insertion_sort(d, a, b, less)
        {
            return;
        }
        // Many equal elements: the slot before `a` (a pivot of an outer level) is not
        // less than this pivot, so split off the run equal to it.
        if a > 0 && !less(&d[a - 1], &d[pivot]) {
            a = partition_equal(d, a, b, pivot, less);
            continue;
        }
        let (mid, already) = partition(d, a, b, pivot, less);
        was_partitioned = already;
        let (left, right) = (mid - a, b - mid);
        let threshold = length / 8;
        if left < right {
            was_balanced = left >= threshold;
            pdqsort(d, a, mid, limit, less);
            a = mid + 1;
        } else {
            was_balanced = right >= threshold;
            pdqsort(d, mid + 1, b, limit, less);
            b = mid;
        }
    }
}

fn partition<T>(
    d: &mut [T],
    a: usize,
    b: usize,
    pivot: usize,
    less: &impl Fn(&T, &T) -> bool,
) -> (usize, bool) {
    d.swap(a, pivot);
    // `i` and `j` bound the unpartitioned part, both inclusive; `j` never drops below `a`.
    let (mut i, mut j) = (a + 1, b - 1);
    while i <= j && less(&d[i], &d[a]) {
        i += 1;
    }
    while i <= j && !less(&d[j], &d[a]) {
        j -= 1;
    }
    if i > j {
        d.swap(j, a);
        return (j, true);
    }
    d.swap(i, j);
    i += 1;
    j -= 1;
    loop {
        while i <= j && less(&d[i], &d[a]) {
            i += 1;
        }
        while i <= j && !less(&d[j], &d[a]) {
            j -= 1;
        }
        if i > j {
            break;
        }
        d.swap(i, j);
        i += 1;
        j -= 1;
    }
    d.swap(j, a);
    (j, false)
}

fn partition_equal<T>(
    d: &mut [T],
    a: usize,
    b: usize,
    pivot: usize,
    less: &impl Fn(&T, &T) -> bool,
) -> usize {
    d.swap(a, pivot);
    let (mut i, mut j) = (a + 1, b - 1);
    loop {
        while i <= j && !less(&d[a], &d[i]) {
            i += 1;
        }
        while i <= j && less(&d[a], &d[j]) {
            j -= 1;
        }
        if i > j {
            break;
        }
        d.swap(i, j);
        i += 1;
        j -= 1;
    }
    i
}

/// Fixes up to 5 out-of-order pairs; true when `d[a..b]` ends up sorted.
fn partial_insertion_sort<T>(
    d: &mut [T],
    a: usize,
    b: usize,
    less: &impl Fn(&T, &T) -> bool,
) -> bool {
    const MAX_STEPS: usize = 5;
    const SHORTEST_SHIFTING: usize = 50;
    let mut i = a + 1;
    for _ in 0..MAX_STEPS {
        while i < b && !less(&d[i], &d[i - 1]) {
            i += 1;
        }
        if i == b {
            return true;
        }
        if b - a < SHORTEST_SHIFTING {
            return false;
        }
        d.swap(i, i - 1);
        // Shift the smaller one left. Go's loop runs down to index 1 of the whole
        // slice, not to `a`; kept as is.
        if i - a >= 2 {
            let mut j = i - 1;
            while j >= 1 {
                if !less(&d[j], &d[j - 1]) {
                    break;
                }
                d.swap(j, j - 1);
                j -= 1;
            }
        }
        // Shift the greater one right.
        if b - i >= 2 {
            let mut j = i + 1;
            while j < b {
                if !less(&d[j], &d[j - 1]) {
                    break;
                }
                d.swap(j, j - 1);
                j += 1;
            }
        }
    }
    false
}

/// Swaps three elements around the middle with positions drawn from a xorshift seeded
/// with the length (deterministic, so the replay matches).
fn break_patterns<T>(d: &mut [T], a: usize, b: usize) {
    let length = b - a;
    if length < 8 {
        return;
    }
    let mut random = length as u64;
    let modulus = 1usize << bit_len(length);
    let mid = a + (length / 4) * 2;
    for idx in mid - 1..=mid + 1 {
        random ^= random << 13;
        random ^= random >> 7;
        random ^= random << 17;
        let mut other = (random as usize) & (modulus - 1);
        if other >= length {
            other -= length;
        }
        d.swap(idx, a + other);
    }
}

fn choose_pivot<T>(
    d: &mut [T],
    a: usize,
    b: usize,
    less: &impl Fn(&T, &T) -> bool,
) -> (usize, Hint) {
    const SHORTEST_NINTHER: usize = 50;
    const MAX_SWAPS: usize = 4 * 3;
    let l = b - a;
    let mut swaps = 0;
    let mut i = a + l / 4;
    let mut j = a + l / 4 * 2;
    let mut k = a + l / 4 * 3;
    if l >= 8 {
        if l >= SHORTEST_NINTHER {
            i = median(d, i - 1, i, i + 1, &mut swaps, less);
            j = median(d, j - 1, j, j + 1, &mut swaps, less);
            k = median(d, k - 1, k, k + 1, &mut swaps, less);
        }
        j = median(d, i, j, k, &mut swaps, less);
    }
    let hint = match swaps {
        0 => Hint::Increasing,
        MAX_SWAPS => Hint::Decreasing,
        _ => Hint::Unknown,
    };
    (j, hint)
}

/// Index of the median of `d[a]`, `d[b]`, `d[c]`, counting the swaps a sort would make.
fn median<T>(
    d: &[T],
    a: usize,
    b: usize,
    c: usize,
    swaps: &mut usize,
    less: &impl Fn(&T, &T) -> bool,
) -> usize {
    let mut order2 = |x: usize, y: usize| {
        if less(&d[y], &d[x]) {
            *swaps += 1;
            (y, x)
        } else {
            (x, y)
        }
    };
    let (a, b) = order2(a, b);
    let (b, _c) = order2(b, c);
    let (_a, b) = order2(a, b);
    b
}

fn reverse_range<T>(d: &mut [T], a: usize, b: usize) {
    d[a..b].reverse();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lt(a: &(u32, usize), b: &(u32, usize)) -> bool {
        a.0 < b.0
    }

    /// xorshift64* for test inputs.
    fn rng(seed: &mut u64) -> u64 {
        *seed ^= *seed >> 12;
        *seed ^= *seed << 25;
        *seed ^= *seed >> 27;
        seed.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    #[test]
    fn sort_orders_every_length_and_shape() {
        let mut seed = 0x1234_5678_9abc_def1u64;
        for n in 0..400usize {
            for shape in 0..5 {
                let mut v: Vec<(u32, usize)> = (0..n)
                    .map(|i| {
                        let k = match shape {
                            0 => rng(&mut seed) as u32,
                            1 => (rng(&mut seed) % 3) as u32,
                            2 => i as u32,
                            3 => (n - i) as u32,
                            _ => (i % 7) as u32,
                        };
                        (k, i)
                    })
                    .collect();
                let mut want: Vec<u32> = v.iter().map(|x| x.0).collect();
                want.sort_unstable();
                sort(&mut v, &lt);
                let got: Vec<u32> = v.iter().map(|x| x.0).collect();
                assert_eq!(got, want, "n={n} shape={shape}");
                // A permutation: every original index still present once.
                let mut idx: Vec<usize> = v.iter().map(|x| x.1).collect();
                idx.sort_unstable();
                assert!(idx.iter().copied().eq(0..n), "n={n} shape={shape}");
            }
        }
    }

    /// Up to 12 elements Go's `sort.Sort` is an insertion sort (stable); 13 equal keys
    /// make choosePivot see an increasing run and partialInsertionSort accept it as is.
    #[test]
    fn sort_small_and_presorted_runs_keep_input_order() {
        let mut w: Vec<(u32, usize)> = (0..12).map(|i| ((i % 2) as u32, i)).collect();
        sort(&mut w, &lt);
        let idx: Vec<usize> = w.iter().map(|x| x.1).collect();
        assert_eq!(idx, vec![0, 2, 4, 6, 8, 10, 1, 3, 5, 7, 9, 11]);
        let mut v: Vec<(u32, usize)> = (0..13).map(|i| (0, i)).collect();
        sort(&mut v, &lt);
        assert!(v.iter().map(|x| x.1).eq(0..13));
    }

    #[test]
    fn heap_keeps_min_at_root() {
        let mut seed = 99u64;
        let mut h: Vec<(u32, usize)> = Vec::new();
        for i in 0..200 {
            heap_push(&mut h, ((rng(&mut seed) % 50) as u32, i), &lt);
            let min = h.iter().map(|x| x.0).min();
            assert_eq!(Some(h[0].0), min);
        }
        h[0].0 = 1000;
        heap_fix(&mut h, 0, &lt);
        for (i, x) in h.iter().enumerate().skip(1) {
            assert!(!lt(x, &h[(i - 1) / 2]), "heap property broken at {i}");
        }
    }

    /// Pushing equal keys never moves them: Go's `up` stops on `!Less`.
    #[test]
    fn heap_push_leaves_ties_in_place() {
        let mut h: Vec<(u32, usize)> = Vec::new();
        for i in 0..10 {
            heap_push(&mut h, (7, i), &lt);
        }
        assert!(h.iter().map(|x| x.1).eq(0..10));
    }
}
