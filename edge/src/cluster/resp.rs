//! RESP2 framing: where one Redis reply ends in a byte stream.
//!
//! Replies on a pipelined connection arrive back to back and split at any
//! byte. [`frame_len`] finds the end of the first complete reply so that the
//! redis crate can decode exactly those bytes (`redis::parse_redis_value`);
//! the decoding itself, and command encoding, stay the crate's.

/// Index just past the CRLF ending the line that starts at `from`.
fn line_end(buf: &[u8], from: usize) -> Option<usize> {
    let rel = buf.get(from..)?.windows(2).position(|w| w == b"\r\n")?;
    Some(from + rel + 2)
}

fn number(buf: &[u8], from: usize, end: usize) -> Result<i64, &'static str> {
    std::str::from_utf8(&buf[from..end - 2])
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or("bad length in a Redis reply")
}

/// Length of the first complete reply in `buf`; `Ok(None)` when more bytes
/// are needed.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, &'static str> {
    let mut pos = 0;
    let mut pending: i64 = 1;
    while pending > 0 {
        let Some(&kind) = buf.get(pos) else {
            return Ok(None);
        };
        let Some(end) = line_end(buf, pos + 1) else {
            return Ok(None);
        };
        match kind {
            b'+' | b'-' | b':' => pos = end,
            b'$' => {
                let len = number(buf, pos + 1, end)?;
                pos = if len < 0 { end } else { end + len as usize + 2 };
                if pos > buf.len() {
                    return Ok(None);
                }
            }
            b'*' => {
                let count = number(buf, pos + 1, end)?;
                pending += count.max(0);
                pos = end;
            }
            _ => return Err("not a RESP2 reply"),
        }
        pending -= 1;
    }
    Ok(Some(pos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_at_every_split() {
        let replies: [&[u8]; 7] = [
            b"+OK\r\n",
            b"-NOSCRIPT No matching script\r\n",
            b":42\r\n",
            b"$5\r\nhello\r\n",
            b"$-1\r\n",
            b"*2\r\n:1\r\n*2\r\n$3\r\nfoo\r\n:-7\r\n",
            b"*0\r\n",
        ];
        for reply in replies {
            let mut stream = reply.to_vec();
            stream.extend_from_slice(b":9\r\n");
            assert_eq!(frame_len(&stream), Ok(Some(reply.len())));
            for k in 0..reply.len() {
                assert_eq!(
                    frame_len(&reply[..k]),
                    Ok(None),
                    "{:?} split at {k}",
                    std::str::from_utf8(reply)
                );
            }
            let value = redis::parse_redis_value(reply);
            assert!(value.is_ok(), "the crate decodes the framed bytes");
        }
        assert!(frame_len(b"?x\r\n").is_err());
    }
}
