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
    keys: Vec<f32>,
    /// `head_dim x capacity`: row `i` holds component `i` of every key.
    keys_t: Vec<f32>,
    /// `capacity x head_dim`.
    values: Vec<f32>,
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
            keys: zeroed(capacity * head_dim),
            keys_t: zeroed(capacity * head_dim),
            values: zeroed(capacity * head_dim),
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

/// `n` zeros, backed by 2 MiB pages where the kernel offers them. SparQ and the top-k
/// methods read scattered rows of caches far larger than what the TLB covers with
/// 4 KiB pages, so without this nearly every gathered row costs a page walk as well as
/// a memory access.
fn zeroed(n: usize) -> Vec<f32> {
    let v = vec![0.0f32; n];
    advise_huge_pages(&v);
    v
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
