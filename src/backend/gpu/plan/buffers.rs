//! Device buffers by lifetime: a value takes a dead buffer when one is
//! free (the best fit, or the largest one grown when none fits), and a
//! buffer dies when the last value living in it does.

/// Bytes of a buffer for `bytes` of data: whole `u32` words, at least one.
pub(crate) fn padded(bytes: u64) -> u64 {
    bytes.div_ceil(4).max(1) * 4
}

/// The buffers of one shape plan and who lives in them.
#[derive(Clone, Debug, Default)]
pub(crate) struct Buffers {
    /// Size of each buffer in bytes.
    pub sizes: Vec<u64>,
    /// The values that live in each buffer, in order.
    pub values: Vec<Vec<String>>,
    /// Live values per buffer.
    refs: Vec<usize>,
    /// Dead buffers, free for reuse.
    free: Vec<usize>,
}

impl Buffers {
    /// A buffer of at least `need` bytes for the value `name`. With `reuse`
    /// it may be a dead buffer (grown if it is too small); otherwise it is new.
    pub fn alloc(&mut self, name: &str, need: u64, reuse: bool) -> usize {
        let pick = if reuse { self.pick_free(need) } else { None };
        let id = match pick {
            Some(id) => {
                self.sizes[id] = self.sizes[id].max(need);
                id
            }
            None => {
                self.sizes.push(need);
                self.values.push(Vec::new());
                self.refs.push(0);
                self.sizes.len() - 1
            }
        };
        self.refs[id] = 1;
        self.values[id].push(name.to_string());
        id
    }

    /// Takes the best-fitting dead buffer, or the largest when none fits.
    fn pick_free(&mut self, need: u64) -> Option<usize> {
        let sizes = &self.sizes;
        let fit = self
            .free
            .iter()
            .enumerate()
            .filter(|(_, &s)| sizes[s] >= need)
            .min_by_key(|(_, &s)| sizes[s])
            .map(|(i, _)| i);
        let fit = fit.or_else(|| {
            self.free
                .iter()
                .enumerate()
                .max_by_key(|(_, &s)| sizes[s])
                .map(|(i, _)| i)
        });
        fit.map(|i| self.free.swap_remove(i))
    }

    /// One more value, `name`, lives in buffer `id` (an alias or a fused
    /// activation written in place).
    pub fn share(&mut self, id: usize, name: &str) {
        self.refs[id] += 1;
        self.values[id].push(name.to_string());
    }

    /// A value living in buffer `id` died; the buffer is free once none is left.
    pub fn release(&mut self, id: usize) {
        self.refs[id] = self.refs[id].saturating_sub(1);
        if self.refs[id] == 0 {
            self.free.push(id);
        }
    }

    /// Bytes of all buffers: the peak, since buffers are reused, never freed.
    pub fn total(&self) -> u64 {
        self.sizes.iter().sum()
    }

    /// A label per buffer: its first value, and how many more reuse it.
    pub fn labels(&self) -> Vec<String> {
        self.values
            .iter()
            .map(|v| {
                let mut l = v.first().cloned().unwrap_or_default();
                if v.len() > 1 {
                    l.push_str(&format!(" (+{} reused)", v.len() - 1));
                }
                l
            })
            .collect()
    }
}
