//! The seed experiment's workload: protocol messages, an enum, each boxed
//! through an allocator, kept in a queue of `IN_FLIGHT` and evaluated when
//! the next message takes its place.

use allocator_api2::alloc::Allocator;
use allocator_api2::boxed::Box;

/// One protocol message: 24 bytes (a tag and two `i64`).
#[derive(Debug, Clone, Copy)]
pub enum Message {
    /// `a + b`.
    Add(i64, i64),
    /// `a - b`.
    Sub(i64, i64),
    /// `a * b`.
    Mul(i64, i64),
    /// `a / b` (0 when `b` is 0).
    Div(i64, i64),
    /// `-a`.
    Neg(i64),
    /// Sixteen bytes echoed back; evaluates to their sum.
    Echo([u8; 16]),
}

/// Messages in flight at once.
pub const IN_FLIGHT: usize = 64;

fn eval(m: &Message) -> i64 {
    match *m {
        Message::Add(a, b) => a.wrapping_add(b),
        Message::Sub(a, b) => a.wrapping_sub(b),
        Message::Mul(a, b) => a.wrapping_mul(b),
        Message::Div(a, b) => a.checked_div(b).unwrap_or(0),
        Message::Neg(a) => a.wrapping_neg(),
        Message::Echo(bytes) => bytes.iter().map(|b| i64::from(*b)).sum(),
    }
}

/// Boxes `messages` messages through `alloc` (one allocation and, once
/// its turn in the queue comes, one deallocation each; none of anything
/// else) and returns the sum of their values.
#[inline(never)]
pub fn exchange<A: Allocator + Copy>(alloc: A, messages: usize) -> i64 {
    let mut queue: [Option<Box<Message, A>>; IN_FLIGHT] = [const { None }; IN_FLIGHT];
    let mut sum = 0i64;
    for i in 0..messages {
        let n = i as i64;
        let message = match i % 6 {
            0 => Message::Add(n, 1),
            1 => Message::Sub(n, 2),
            2 => Message::Mul(n, 3),
            3 => Message::Div(n, 4),
            4 => Message::Neg(n),
            _ => Message::Echo([i as u8; 16]),
        };
        let boxed = Box::new_in(std::hint::black_box(message), alloc);
        if let Some(done) = queue[i % IN_FLIGHT].replace(boxed) {
            sum = sum.wrapping_add(eval(&done));
        }
    }
    for done in queue.iter_mut().filter_map(Option::take) {
        sum = sum.wrapping_add(eval(&done));
    }
    sum
}
