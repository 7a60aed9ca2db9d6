//! The KV cache of one KV head, stored for fast decode-step reads: keys as rows (for
//! exact attention over a selection) *and* transposed (so SparQ's step 2 reads `r`
//! contiguous rows of length `S`), values as rows.

/// The cached keys and values of one KV head in one layer, with room for `capacity`
/// positions. Keys are kept twice (rows and transposed), as SPEC section 2 describes.
#[derive(Clone, Debug)]
pub struct HeadKv {
    head_dim: usize,
    len: usize,
    capacity: usize,
    /// `capacity x head_dim`, row `p` is the key of position `p`.
    keys: LineAligned,
    /// `head_dim x capacity`: row `i` holds component `i` of every key.
    keys_t: LineAligned,
    /// `capacity x head_dim`.
    values: LineAligned,
    /// Running sum of the values of the `len` positions, kept in f64 so that SparQ's
    /// mean value costs `d` reads per step (SPEC section 4's `4*d`) rather than a pass
    /// over all of `V`, without drifting over long caches.
    value_sum: Vec<f64>,
}

impl HeadKv {
    pub fn with_capacity(head_dim: usize, capacity: usize) -> Self {
        Self {
            head_dim,
            len: 0,
            capacity,
            keys: LineAligned::zeroed(capacity * head_dim),
            keys_t: LineAligned::zeroed(capacity * head_dim),
            values: LineAligned::zeroed(capacity * head_dim),
            value_sum: vec![0.0; head_dim],
        }
    }

    /// Builds a full cache from row-major `len x head_dim` keys and values.
    pub fn from_rows(head_dim: usize, keys: &[f32], values: &[f32]) -> Self {
        assert_eq!(keys.len(), values.len());
        assert_eq!(keys.len() % head_dim.max(1), 0);
        let len = keys.len() / head_dim.max(1);
        let mut kv = Self::with_capacity(head_dim, len);
        for p in 0..len {
            kv.push(
                &keys[p * head_dim..(p + 1) * head_dim],
                &values[p * head_dim..(p + 1) * head_dim],
            );
        }
        kv
    }

    /// Appends one position. Panics when full: capacity is fixed by the caller,
    /// who knows the number of tokens it will generate.
    pub fn push(&mut self, key: &[f32], value: &[f32]) {
        assert!(
            self.len < self.capacity,
            "HeadKv is full ({} positions)",
            self.capacity
        );
        assert_eq!(key.len(), self.head_dim);
        assert_eq!(value.len(), self.head_dim);
        let p = self.len;
        let d = self.head_dim;
        self.keys[p * d..(p + 1) * d].copy_from_slice(key);
        self.values[p * d..(p + 1) * d].copy_from_slice(value);
        for (i, &x) in key.iter().enumerate() {
            self.keys_t[i * self.capacity + p] = x;
        }
        for (s, &v) in self.value_sum.iter_mut().zip(value) {
            *s += f64::from(v);
        }
        self.len += 1;
    }

    /// Forgets every position (keeps the allocation).
    pub fn clear(&mut self) {
        self.len = 0;
        self.value_sum.fill(0.0);
    }

    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    #[inline]
    pub fn head_dim(&self) -> usize {
        self.head_dim
    }
    #[inline]
    pub fn key(&self, p: usize) -> &[f32] {
        debug_assert!(p < self.len);
        &self.keys[p * self.head_dim..(p + 1) * self.head_dim]
    }
    #[inline]
    pub fn value(&self, p: usize) -> &[f32] {
        debug_assert!(p < self.len);
        &self.values[p * self.head_dim..(p + 1) * self.head_dim]
    }
    /// Component `i` of the keys of all `len` positions (a contiguous row of the
    /// transposed copy).
    #[inline]
    pub fn key_column(&self, i: usize) -> &[f32] {
        &self.keys_t[i * self.capacity..i * self.capacity + self.len]
    }
    /// All keys, `len x head_dim` row-major.
    #[inline]
    pub fn keys(&self) -> &[f32] {
        &self.keys[..self.len * self.head_dim]
    }
    /// All values, `len x head_dim` row-major.
    #[inline]
    pub fn values(&self) -> &[f32] {
        &self.values[..self.len * self.head_dim]
    }
    /// The sum of the values of all `len` positions.
    #[inline]
    pub fn value_sum(&self) -> &[f64] {
        &self.value_sum
    }
    /// Positions this cache can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

/// Floats per cache line.
const LINE: usize = 64 / std::mem::size_of::<f32>();

/// A zeroed buffer of floats whose first element starts a cache line, backed by 2 MiB
/// pages where the kernel offers them. SparQ and the top-k methods gather scattered
/// rows: a row of `d` floats that starts a line spans `d / 16` lines instead of one
/// more (20% fewer lines fetched at d = 64), and huge pages spare nearly every
/// gathered row a page walk, the cache being far larger than what the TLB covers with
/// 4 KiB pages.
struct LineAligned {
    /// `len + LINE - 1` floats; the buffer proper starts at `offset`.
    storage: Vec<f32>,
    offset: usize,
    len: usize,
}

impl LineAligned {
    fn zeroed(len: usize) -> Self {
        let storage = vec![0.0f32; len + LINE - 1];
        advise_huge_pages(&storage);
        let misalign = storage.as_ptr() as usize % 64;
        let offset = if misalign == 0 {
            0
        } else {
            (64 - misalign) / std::mem::size_of::<f32>()
        };
        Self {
            storage,
            offset,
            len,
        }
    }
}

impl std::ops::Deref for LineAligned {
    type Target = [f32];
    #[inline]
    fn deref(&self) -> &[f32] {
        &self.storage[self.offset..self.offset + self.len]
    }
}

impl std::ops::DerefMut for LineAligned {
    #[inline]
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.storage[self.offset..self.offset + self.len]
    }
}

/// A clone is a fresh allocation, aligned on its own (copying the offset would not be).
impl Clone for LineAligned {
    fn clone(&self) -> Self {
        let mut copy = Self::zeroed(self.len);
        copy.copy_from_slice(self);
        copy
    }
}

impl std::fmt::Debug for LineAligned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LineAligned({} floats)", self.len)
    }
}

#[cfg(target_os = "linux")]
fn advise_huge_pages(v: &[f32]) {
    const HUGE: usize = 2 << 20;
    let start = v.as_ptr() as usize;
    let end = start + std::mem::size_of_val(v);
    // Only whole 2 MiB pages inside the buffer can be advised.
    let first = start.next_multiple_of(HUGE);
    let last = end / HUGE * HUGE;
    if last > first {
        // SAFETY: the range lies inside `v`'s allocation, which outlives the call;
        // MADV_HUGEPAGE changes only how pages are backed, never their contents, and
        // an error (a kernel without transparent huge pages) is harmless to ignore.
        unsafe {
            libc::madvise(
                first as *mut libc::c_void,
                last - first,
                libc::MADV_HUGEPAGE,
            );
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn advise_huge_pages(_: &[f32]) {}

/// What one decode step of one KV head sees: the prompt's cache (shared read-only by
/// every branch) followed by the branch's own generated positions. The current token
/// is the last position. Logical position `p` is `prompt[p]` for `p < prompt.len()`,
/// else `generated[p - prompt.len()]`.
#[derive(Clone, Copy, Debug)]
pub struct KvView<'a> {
    pub prompt: &'a HeadKv,
    pub generated: &'a HeadKv,
}

impl<'a> KvView<'a> {
    pub fn new(prompt: &'a HeadKv, generated: &'a HeadKv) -> Self {
        assert_eq!(prompt.head_dim(), generated.head_dim());
        Self { prompt, generated }
    }
    /// Total positions `S`, the current token included.
    #[inline]
    pub fn len(&self) -> usize {
        self.prompt.len() + self.generated.len()
    }
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    #[inline]
    pub fn head_dim(&self) -> usize {
        self.prompt.head_dim()
    }
    /// The two parts in order with the logical position of their first entry.
    #[inline]
    pub fn segments(&self) -> [(usize, &'a HeadKv); 2] {
        [(0, self.prompt), (self.prompt.len(), self.generated)]
    }
    #[inline]
    pub fn key(&self, p: usize) -> &'a [f32] {
        let n = self.prompt.len();
        if p < n {
            self.prompt.key(p)
        } else {
            self.generated.key(p - n)
        }
    }
    #[inline]
    pub fn value(&self, p: usize) -> &'a [f32] {
        let n = self.prompt.len();
        if p < n {
            self.prompt.value(p)
        } else {
            self.generated.value(p - n)
        }
    }
    /// The mean of the values of all `len()` positions (SparQ's `v_mean`), from the
    /// running sums the two parts keep.
    pub fn value_mean(&self, out: &mut [f32]) {
        let n = self.len().max(1) as f64;
        let (a, b) = (self.prompt.value_sum(), self.generated.value_sum());
        for ((o, x), y) in out.iter_mut().zip(a).zip(b) {
            *o = ((x + y) / n) as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_start_on_cache_lines_also_in_clones() {
        for (d, cap) in [(64, 1000), (128, 3), (80, 77)] {
            let mut kv = HeadKv::with_capacity(d, cap);
            let row: Vec<f32> = (0..d).map(|i| i as f32).collect();
            kv.push(&row, &row);
            let copy = kv.clone();
            for c in [&kv, &copy] {
                assert_eq!(c.key(0).as_ptr() as usize % 64, 0, "d={d}");
                assert_eq!(c.value(0).as_ptr() as usize % 64, 0, "d={d}");
                assert_eq!(c.key_column(0).as_ptr() as usize % 64, 0, "d={d}");
                assert_eq!(c.key(0), &row[..]);
                assert_eq!(c.key_column(5), &[5.0]);
            }
        }
    }
}
