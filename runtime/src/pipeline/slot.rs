//! The latest-frame slot between the camera thread and the inference workers.
//!
//! The slot holds at most one frame. [`Slot::push`] never waits: when the slot is full, the
//! frame in it (not yet taken by a worker) is taken back, counted as dropped, and replaced by
//! the newer one. So a worker always gets the most recent frame, and a slow model costs frames,
//! never camera-thread time.
//!
//! A pushed frame is copied into a pooled [`OwnedFrame`], so the camera may reuse its buffer as
//! soon as `push` returns. Workers hand buffers back with [`Slot::recycle`]; both channels are
//! bounded (crossbeam's array flavour, allocated once), so in steady state a push allocates
//! nothing.

use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};

use super::frame::{Frame, FrameError, PixelFormat};

/// A frame copied out of the camera's buffer, rows packed (stride = row bytes).
#[derive(Debug)]
pub struct OwnedFrame {
    planes: [Vec<u8>; 3],
    strides: [usize; 3],
    width: usize,
    height: usize,
    format: PixelFormat,
    pub timestamp_us: u64,
    /// Position of this frame among all frames pushed to the slot, from 0.
    pub sequence: u64,
}

impl Default for OwnedFrame {
    fn default() -> Self {
        Self {
            planes: Default::default(),
            strides: [0; 3],
            width: 0,
            height: 0,
            format: PixelFormat::Gray8,
            timestamp_us: 0,
            sequence: 0,
        }
    }
}

impl OwnedFrame {
    /// Copies a validated `frame` in, reusing this buffer's capacity.
    fn fill_from(&mut self, frame: &Frame<'_>, sequence: u64) -> Result<(), FrameError> {
        let shapes = frame
            .format
            .plane_shapes(frame.width, frame.height)
            .ok_or(FrameError::Overflow)?;
        for (i, dst) in self.planes.iter_mut().enumerate() {
            dst.clear();
            self.strides[i] = 0;
            let Some(shape) = shapes.get(i) else { continue };
            for row in 0..shape.rows {
                let start = row * frame.strides[i];
                dst.extend_from_slice(&frame.planes[i][start..start + shape.row_bytes]);
            }
            self.strides[i] = shape.row_bytes;
        }
        self.width = frame.width;
        self.height = frame.height;
        self.format = frame.format;
        self.timestamp_us = frame.timestamp_us;
        self.sequence = sequence;
        Ok(())
    }

    /// A borrowed view, for the conversions.
    pub fn as_frame(&self) -> Frame<'_> {
        Frame {
            planes: [&self.planes[0], &self.planes[1], &self.planes[2]],
            strides: self.strides,
            width: self.width,
            height: self.height,
            format: self.format,
            timestamp_us: self.timestamp_us,
        }
    }
}

/// The one-frame slot and its buffer pool. Shared by reference between the camera thread(s)
/// and the workers.
pub struct Slot {
    tx: Sender<OwnedFrame>,
    rx: Receiver<OwnedFrame>,
    free_tx: Sender<OwnedFrame>,
    free_rx: Receiver<OwnedFrame>,
    pushed: AtomicU64,
    dropped: AtomicU64,
}

impl Slot {
    /// A slot whose pool keeps up to `pool` spare buffers: one per worker plus two (the frame
    /// in the slot and the one being copied) is enough for allocation-free steady state.
    pub fn new(pool: usize) -> Self {
        let (tx, rx) = bounded(1);
        let (free_tx, free_rx) = bounded(pool.max(1));
        Self {
            tx,
            rx,
            free_tx,
            free_rx,
            pushed: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        }
    }

    /// Validates `frame`, copies it in and makes it the frame workers take next, replacing
    /// (and counting as dropped) one not yet taken. Never blocks. Returns the frame's sequence
    /// number.
    pub fn push(&self, frame: &Frame<'_>) -> Result<u64, FrameError> {
        frame.validate()?;
        let mut buf = self.free_rx.try_recv().unwrap_or_default();
        let sequence = self.pushed.fetch_add(1, Ordering::Relaxed);
        buf.fill_from(frame, sequence)?;
        loop {
            match self.tx.try_send(buf) {
                Ok(()) => return Ok(sequence),
                Err(TrySendError::Full(back)) => {
                    buf = back;
                    // Take the waiting frame back; if a worker got to it first, the slot is
                    // free now and the next try_send succeeds.
                    if let Ok(old) = self.rx.try_recv() {
                        self.dropped.fetch_add(1, Ordering::Relaxed);
                        self.recycle(old);
                    }
                }
                Err(TrySendError::Disconnected(_)) => unreachable!("the slot holds its receiver"),
            }
        }
    }

    /// Where workers wait for frames (`recv` or `select!`).
    pub fn receiver(&self) -> &Receiver<OwnedFrame> {
        &self.rx
    }

    /// The waiting frame, if any, without blocking.
    pub fn take(&self) -> Option<OwnedFrame> {
        self.rx.try_recv().ok()
    }

    /// Returns a buffer to the pool (or frees it when the pool is full).
    pub fn recycle(&self, frame: OwnedFrame) {
        let _ = self.free_tx.try_send(frame);
    }

    /// Frames pushed so far.
    pub fn pushed(&self) -> u64 {
        self.pushed.load(Ordering::Relaxed)
    }

    /// Frames replaced in the slot before any worker took them.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grey(data: &[u8], ts: u64) -> Frame<'_> {
        Frame::packed(data, 2, 2, 3, PixelFormat::Gray8, ts)
    }

    #[test]
    fn newest_frame_replaces_the_waiting_one() {
        let slot = Slot::new(3);
        let data = [1, 2, 0xEE, 3, 4];
        for ts in 0..5 {
            assert_eq!(slot.push(&grey(&data, ts)).unwrap(), ts);
        }
        assert_eq!((slot.pushed(), slot.dropped()), (5, 4));
        let f = slot.take().unwrap();
        assert_eq!((f.sequence, f.timestamp_us), (4, 4));
        // Copied with the padding removed: the camera's buffer is no longer needed.
        assert_eq!(f.as_frame().planes[0], [1, 2, 3, 4]);
        assert!(slot.take().is_none());
    }

    #[test]
    fn bad_frames_are_refused_and_not_counted() {
        let slot = Slot::new(1);
        assert!(matches!(
            slot.push(&grey(&[1, 2, 3], 0)),
            Err(FrameError::PlaneTooShort { .. })
        ));
        assert_eq!(slot.pushed(), 0);
    }

    #[test]
    fn steady_state_reuses_pooled_buffers() {
        let slot = Slot::new(2);
        let data = [9u8; 5];
        slot.push(&grey(&data, 0)).unwrap();
        let first = slot.take().unwrap();
        let ptr = first.planes[0].as_ptr();
        slot.recycle(first);
        for ts in 1..10 {
            slot.push(&grey(&data, ts)).unwrap();
            let f = slot.take().unwrap();
            assert_eq!(
                f.planes[0].as_ptr(),
                ptr,
                "buffer reallocated at frame {ts}"
            );
            slot.recycle(f);
        }
    }
}
