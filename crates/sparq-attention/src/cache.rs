//! The KV cache of one KV head, stored for fast decode-step reads: keys as rows (for
//! exact attention over a selection) *and* transposed (so SparQ's step 2 reads `r`
//! contiguous rows of length `S`), values as rows.
//!
//! A cache whose keys and values are all exact 16-bit floats (a run that rounds them
//! so, as `--dtype q4` does) can also keep its transposed keys and its values at 16
//! bits ([`HeadKv::keep_half_copy`]): the dense passes read those, half the bytes,
//! and widening them back gives the same floats, so the same results bit for bit.

use half::f16;
use half::slice::HalfFloatSliceExt;

/// Rounds every element to the nearest f16 (ties to even), as a 16-bit KV cache stores
/// it, kept as f32. Fails with the first element beyond f16's range (about 65,504 in
/// magnitude; the slice is then partly rounded), or that is not finite.
pub fn round_to_half(xs: &mut [f32]) -> Result<(), f32> {
    let mut half = [f16::ZERO; 256];
    for chunk in xs.chunks_mut(half.len()) {
        let half = &mut half[..chunk.len()];
        half.convert_from_f32_slice(chunk);
        if let Some((&x, _)) = chunk.iter().zip(&*half).find(|(_, h)| !h.is_finite()) {
            return Err(x);
        }
        half.convert_to_f32_slice(chunk);
    }
    Ok(())
}

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
    /// The transposed keys and the values of the `len` positions at 16 bits, when kept.
    half: Option<HalfKv>,
}

/// A cache's transposed keys (`head_dim x len`) and values (`len x head_dim`) as f16,
/// each exactly the f32 it copies.
#[derive(Clone, Debug)]
pub struct HalfKv {
    len: usize,
    keys_t: LineAligned<f16>,
    values: LineAligned<f16>,
}

impl HalfKv {
    /// Component `i` of the keys of all positions.
    #[inline]
    pub fn key_column(&self, i: usize) -> &[f16] {
        &self.keys_t[i * self.len..(i + 1) * self.len]
    }
    /// The start of the transposed keys; column `i` starts `i * column_stride()` on.
    #[inline]
    pub(crate) fn key_columns_ptr(&self) -> *const f16 {
        self.keys_t.as_ptr()
    }
    /// Elements from one key column to the next.
    #[inline]
    pub(crate) fn column_stride(&self) -> usize {
        self.len
    }
    /// All values, row-major.
    #[inline]
    pub fn values(&self) -> &[f16] {
        &self.values
    }
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
            half: None,
        }
    }

    /// Builds a full cache from row-major `len x head_dim` keys and values: the same
    /// cache as `push`ing each position in turn (the value sums added in the same
    /// order), built by copies and a transposition in blocks instead of one scattered
    /// column store per key component.
    pub fn from_rows(head_dim: usize, keys: &[f32], values: &[f32]) -> Self {
        assert_eq!(keys.len(), values.len());
        assert_eq!(keys.len() % head_dim.max(1), 0);
        let d = head_dim;
        let len = keys.len() / d.max(1);
        let mut keys_t = LineAligned::zeroed(len * d);
        // Blocks of 16 positions: 16 key rows in, `d` runs of 16 columns out.
        const BLOCK: usize = 16;
        for p0 in (0..len).step_by(BLOCK) {
            let n = BLOCK.min(len - p0);
            let rows = &keys[p0 * d..(p0 + n) * d];
            for i in 0..d {
                let run = &mut keys_t[i * len + p0..i * len + p0 + n];
                for (j, x) in run.iter_mut().enumerate() {
                    *x = rows[j * d + i];
                }
            }
        }
        let mut value_sum = vec![0.0f64; d];
        for row in values.chunks_exact(d.max(1)) {
            for (s, &v) in value_sum.iter_mut().zip(row) {
                *s += f64::from(v);
            }
        }
        Self {
            head_dim,
            len,
            capacity: len,
            keys: LineAligned::copied(keys),
            keys_t,
            values: LineAligned::copied(values),
            value_sum,
            half: None,
        }
    }

    /// Keeps a 16-bit copy of the transposed keys and the values, which the dense
    /// passes then read instead, if every key and value is exactly an f16 (finite);
    /// returns whether it did. A later `push` or `clear` drops the copy.
    #[must_use]
    pub fn keep_half_copy(&mut self) -> bool {
        let n = self.len * self.head_dim;
        let mut keys_t = LineAligned::<f16>::zeroed(n);
        for i in 0..self.head_dim {
            keys_t[i * self.len..(i + 1) * self.len].convert_from_f32_slice(self.key_column(i));
        }
        let mut values = LineAligned::<f16>::zeroed(n);
        values.convert_from_f32_slice(self.values());
        let half = HalfKv {
            len: self.len,
            keys_t,
            values,
        };
        // Widened back a chunk at a time (the slice conversions use F16C; one call per
        // element was most of the check's time).
        let exact = |copy: &[f16], original: &[f32]| {
            let mut widened = [0.0f32; 256];
            copy.chunks(widened.len())
                .zip(original.chunks(widened.len()))
                .all(|(copy, original)| {
                    let widened = &mut widened[..copy.len()];
                    copy.convert_to_f32_slice(widened);
                    let same = |(w, x): (&f32, &f32)| x.is_finite() && w.to_bits() == x.to_bits();
                    widened.iter().zip(original).all(same)
                })
        };
        let keys_exact = (0..self.head_dim).all(|i| exact(half.key_column(i), self.key_column(i)));
        if !(keys_exact && exact(half.values(), self.values())) {
            return false;
        }
        self.half = Some(half);
        true
    }

    /// The 16-bit copy, when one is kept.
    #[inline]
    pub fn half(&self) -> Option<&HalfKv> {
        self.half.as_ref()
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
        self.half = None;
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
        self.half = None;
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
    /// The three buffers whole (keys, transposed keys, values), for code that walks
    /// the cache's memory rather than its positions: the bench's page touch.
    pub fn buffers(&self) -> [&[f32]; 3] {
        [&self.keys, &self.keys_t, &self.values]
    }
}

/// A buffer of floats that starts a cache line and, once it spans a 2 MiB page,
/// starts and ends on one so that all of it can be backed by 2 MiB pages where the
/// kernel offers them. SparQ and the top-k methods gather scattered rows: a row of `d`
/// floats that starts a line spans `d / 16` lines instead of one more (20% fewer lines
/// fetched at d = 64), and huge pages spare nearly every gathered row a page walk, the
/// cache being far larger than what the TLB covers with 4 KiB pages. (A `Vec` advised
/// only on the 2 MiB pages inside it left a quarter to a half of the cache on small
/// pages at S = 65,536 and 16,384, d = 64.)
pub struct LineAligned<T: Plain = f32> {
    ptr: std::ptr::NonNull<T>,
    len: usize,
    layout: std::alloc::Layout,
}

/// 2 MiB, the huge-page size of x86-64 and the usual one on aarch64.
const HUGE_PAGE: usize = 2 << 20;
/// A cache line.
const LINE_BYTES: usize = 64;

/// What a [`LineAligned`] holds: numbers that are plain bits.
///
/// # Safety
/// All-zero bits must be the value zero.
pub unsafe trait Plain: Copy + Send + Sync + 'static {}
// SAFETY: zero bits are 0.0 in both.
unsafe impl Plain for f32 {}
// SAFETY: as above.
unsafe impl Plain for f16 {}

impl<T: Plain> LineAligned<T> {
    /// `len` zeros.
    pub fn zeroed(len: usize) -> Self {
        let buf = Self::uninit(len);
        // SAFETY: `ptr` is valid for `len` elements, and zero bits are zero (`Plain`).
        unsafe { std::ptr::write_bytes(buf.ptr.as_ptr(), 0, len) };
        buf
    }

    /// A copy of `src`, written once (not zeroed first).
    pub fn copied(src: &[T]) -> Self {
        let buf = Self::uninit(src.len());
        // SAFETY: `ptr` is valid for `src.len()` elements and a fresh allocation, so it
        // cannot overlap `src`.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), buf.ptr.as_ptr(), src.len()) };
        buf
    }

    /// Room for `len` elements, not yet written: the constructors above fill it before
    /// anything can read it.
    fn uninit(len: usize) -> Self {
        let bytes = len * std::mem::size_of::<T>();
        if bytes == 0 {
            return Self {
                ptr: std::ptr::NonNull::dangling(),
                len: 0,
                layout: std::alloc::Layout::new::<()>(),
            };
        }
        let (size, align) = if bytes >= HUGE_PAGE {
            (bytes.next_multiple_of(HUGE_PAGE), HUGE_PAGE)
        } else {
            (bytes, LINE_BYTES)
        };
        let layout = std::alloc::Layout::from_size_align(size, align)
            .expect("a KV cache buffer smaller than isize::MAX bytes");
        // SAFETY: `layout` has a non-zero size.
        let raw = unsafe { std::alloc::alloc(layout) };
        let Some(ptr) = std::ptr::NonNull::new(raw.cast::<T>()) else {
            std::alloc::handle_alloc_error(layout)
        };
        // Advise before the first write, which is what faults the pages in: memory
        // touched before the advice stays on 4 KiB pages.
        if align == HUGE_PAGE {
            advise_huge_pages(raw, size);
        }
        Self { ptr, len, layout }
    }
}

// SAFETY: a `LineAligned` owns its buffer alone, like a `Vec<T>`.
unsafe impl<T: Plain> Send for LineAligned<T> {}
// SAFETY: shared access only reads, through `&[T]`.
unsafe impl<T: Plain> Sync for LineAligned<T> {}

impl<T: Plain> Drop for LineAligned<T> {
    fn drop(&mut self) {
        if self.layout.size() > 0 {
            // SAFETY: allocated in `zeroed` with this very layout.
            unsafe { std::alloc::dealloc(self.ptr.as_ptr().cast(), self.layout) };
        }
    }
}

impl<T: Plain> std::ops::Deref for LineAligned<T> {
    type Target = [T];
    #[inline]
    fn deref(&self) -> &[T] {
        // SAFETY: `ptr` holds `len` initialised elements (or is dangling with `len` 0).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: Plain> std::ops::DerefMut for LineAligned<T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as in `deref`, and `&mut self` makes the access unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: Plain> Clone for LineAligned<T> {
    fn clone(&self) -> Self {
        Self::copied(self)
    }
}

impl<T: Plain> std::fmt::Debug for LineAligned<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LineAligned({} elements)", self.len)
    }
}

#[cfg(target_os = "linux")]
fn advise_huge_pages(start: *mut u8, bytes: usize) {
    // SAFETY: the range is one live allocation, aligned to a page; MADV_HUGEPAGE
    // changes only how pages are backed, never their contents, and an error (a kernel
    // without transparent huge pages) is harmless to ignore.
    unsafe {
        libc::madvise(start.cast(), bytes, libc::MADV_HUGEPAGE);
    }
}

#[cfg(not(target_os = "linux"))]
fn advise_huge_pages(_: *mut u8, _: usize) {}

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

    #[test]
    fn buffers_span_the_whole_capacity_and_hold_the_rows() {
        let (d, cap) = (8, 40);
        let mut kv = HeadKv::with_capacity(d, cap);
        let key: Vec<f32> = (0..d).map(|i| i as f32).collect();
        let value: Vec<f32> = (0..d).map(|i| -(i as f32)).collect();
        kv.push(&key, &value);
        let [keys, keys_t, values] = kv.buffers();
        for b in [keys, keys_t, values] {
            assert_eq!(b.len(), cap * d);
        }
        assert_eq!(&keys[..d], &key[..]);
        assert_eq!(&values[..d], &value[..]);
        assert_eq!(keys_t[3 * cap], 3.0);
    }

    #[test]
    fn from_rows_builds_the_cache_that_pushing_each_position_builds() {
        // Lengths around the transposition's blocks of 16, and a single position.
        for (d, len) in [(64, 37), (5, 16), (128, 1), (3, 33)] {
            let keys: Vec<f32> = (0..len * d).map(|i| (i as f32 * 0.37).sin()).collect();
            let values: Vec<f32> = (0..len * d).map(|i| (i as f32 * 0.11).cos()).collect();
            let built = HeadKv::from_rows(d, &keys, &values);
            let mut pushed = HeadKv::with_capacity(d, len);
            for p in 0..len {
                pushed.push(&keys[p * d..(p + 1) * d], &values[p * d..(p + 1) * d]);
            }
            assert_eq!((built.len(), built.capacity()), (len, len));
            assert_eq!(built.keys(), pushed.keys());
            assert_eq!(built.values(), pushed.values());
            for i in 0..d {
                assert_eq!(
                    built.key_column(i),
                    pushed.key_column(i),
                    "d={d} column {i}"
                );
            }
            // Bit for bit: the sums are added in the same order.
            assert_eq!(built.value_sum(), pushed.value_sum());
        }
    }

    #[test]
    fn large_buffers_start_on_a_huge_page_and_read_as_zeros() {
        // 2 MiB and a bit: rounded up to two huge pages, of which only `len` is visible.
        let len = HUGE_PAGE / 4 + 3;
        let mut buf = LineAligned::zeroed(len);
        assert_eq!(buf.as_ptr() as usize % HUGE_PAGE, 0);
        assert_eq!(buf.len(), len);
        assert!(buf.iter().all(|&x| x == 0.0));
        buf[len - 1] = 7.0;
        let copy = buf.clone();
        buf[len - 1] = 0.0;
        assert_eq!(copy[len - 1], 7.0);
        assert_eq!(copy.as_ptr() as usize % HUGE_PAGE, 0);
    }

    #[test]
    fn an_empty_cache_holds_nothing_and_clones() {
        let kv = HeadKv::with_capacity(64, 0);
        let copy = kv.clone();
        assert!(copy.is_empty());
        assert_eq!(copy.keys(), &[] as &[f32]);
        assert_eq!(copy.key_column(3), &[] as &[f32]);
    }

    #[test]
    fn rounding_to_half_matches_a_conversion_and_refuses_what_f16_cannot_hold() {
        let mut xs: Vec<f32> = (0..600)
            .map(|i| (i as f32 * 0.731).sin() * 3000.0)
            .collect();
        let want: Vec<f32> = xs.iter().map(|&x| f16::from_f32(x).to_f32()).collect();
        round_to_half(&mut xs).unwrap();
        assert_eq!(xs, want);
        // Exact halves stay as they are; 1 + 2^-11 is a tie and goes to even (1.0).
        let mut ys = vec![1.0, -0.5, 65504.0, 1.0 + 2f32.powi(-11)];
        round_to_half(&mut ys).unwrap();
        assert_eq!(ys, [1.0, -0.5, 65504.0, 1.0]);
        for bad in [70000.0, -1e6, f32::INFINITY, f32::NAN] {
            let mut zs = vec![0.25; 300];
            zs[290] = bad;
            let err = round_to_half(&mut zs).unwrap_err();
            assert_eq!(err.to_bits(), bad.to_bits());
        }
    }

    #[test]
    fn the_half_copy_holds_the_floats_and_only_exact_halves() {
        let (d, len) = (5, 37);
        let keys: Vec<f32> = (0..len * d)
            .map(|i| f16::from_f32(i as f32 * 0.37).to_f32())
            .collect();
        let values: Vec<f32> = (0..len * d)
            .map(|i| f16::from_f32(-(i as f32) * 0.11).to_f32())
            .collect();
        let mut kv = HeadKv::from_rows(d, &keys, &values);
        assert!(kv.half().is_none());
        assert!(kv.keep_half_copy());
        let half = kv.half().unwrap();
        for i in 0..d {
            let widened: Vec<f32> = half.key_column(i).iter().map(|h| h.to_f32()).collect();
            assert_eq!(widened, kv.key_column(i));
        }
        let widened: Vec<f32> = half.values().iter().map(|h| h.to_f32()).collect();
        assert_eq!(widened, kv.values());
        // One key or one value that is not an f16 and no copy is kept.
        for (k, v) in [(1.0 + 2f32.powi(-12), 0.0), (0.0, 1e-9), (0.0, 1e5)] {
            let (mut keys, mut values) = (keys.clone(), values.clone());
            keys[3 * d + 2] = k;
            values[len * d - 1] = v;
            let mut kv = HeadKv::from_rows(d, &keys, &values);
            assert!(!kv.keep_half_copy(), "key {k}, value {v}");
            assert!(kv.half().is_none());
        }
        // A push or a clear drops the copy, which would no longer cover the cache.
        let mut kv = HeadKv::with_capacity(d, 2);
        kv.push(&[1.0; 5], &[2.0; 5]);
        assert!(kv.keep_half_copy());
        kv.push(&[1.0; 5], &[2.0; 5]);
        assert!(kv.half().is_none());
        assert!(kv.keep_half_copy());
        kv.clear();
        assert!(kv.half().is_none());
    }
}
