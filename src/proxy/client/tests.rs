use super::*;

/// Decodes all of `wire` fed in pieces of `piece` bytes; the data, or the framing error.
fn decode(framing: Framing, wire: &[u8], piece: usize) -> Result<(Vec<u8>, Vec<u8>), &'static str> {
    let mut framing = framing;
    let mut buf = BytesMut::new();
    let mut data = Vec::new();
    let mut fed = 0;
    loop {
        match step(&mut framing, &mut buf)? {
            Step::Data(d) => data.extend_from_slice(&d),
            Step::End => return Ok((data, buf.to_vec())),
            Step::NeedMore => {
                if fed == wire.len() {
                    return Err("ran out");
                }
                let n = piece.min(wire.len() - fed);
                buf.extend_from_slice(&wire[fed..fed + n]);
                fed += n;
            }
        }
    }
}

const CHUNKED: Framing = Framing::Chunked(Chunk::Size);

#[test]
fn a_chunked_answer_decodes_whole_in_any_pieces_and_leaves_what_follows() {
    let wire = b"5\r\nhello\r\n1;ext=1\r\n \r\n0\r\nx-trailer: 1\r\n\r\nNEXT";
    for piece in 1..wire.len() {
        let (data, rest) = decode(CHUNKED, wire, piece).unwrap();
        assert_eq!(data, b"hello ", "piece {piece}");
        // What follows the answer stays in the buffer (or unread): the connection then closes.
        assert!(b"NEXT".starts_with(&rest), "piece {piece}: {rest:?}");
    }
}

#[test]
fn a_length_answer_stops_at_its_length() {
    let (data, rest) = decode(Framing::Length(5), b"helloEXTRA", 64).unwrap();
    assert_eq!(data, b"hello");
    assert_eq!(rest, b"EXTRA");
}

#[test]
fn broken_chunked_framing_is_an_error_not_a_panic() {
    for (wire, why) in [
        (&b"zz\r\nhello\r\n0\r\n\r\n"[..], "malformed chunk size"),
        (
            b"5\nhello\r\n0\r\n\r\n",
            "chunk-size line not ended by CRLF",
        ),
        (b"5\r\nhelloXX0\r\n\r\n", "chunk data not followed by CRLF"),
        (b"11111111111111111\r\n", "malformed chunk size"),
        (b"5 x\r\nhello\r\n", "malformed chunk size"),
        (b"-5\r\nhello\r\n", "malformed chunk size"),
    ] {
        assert_eq!(
            decode(CHUNKED, wire, 3),
            Err(why),
            "{:?}",
            String::from_utf8_lossy(wire)
        );
    }
}

#[test]
fn a_chunk_line_or_trailers_past_their_limits_are_refused_before_they_are_held() {
    let mut line = b"5;".to_vec();
    line.extend(std::iter::repeat_n(b'a', MAX_CHUNK_LINE_BYTES + 10));
    assert_eq!(
        decode(CHUNKED, &line, 1024),
        Err("chunk-size line over the limit")
    );
    let mut trailers = b"0\r\n".to_vec();
    for _ in 0..MAX_TRAILER_BYTES / 10 + 1 {
        trailers.extend_from_slice(b"x-t: 1234\r\n");
    }
    assert_eq!(
        decode(CHUNKED, &trailers, 1024),
        Err("trailers over the limit")
    );
    // One line just under the limit is fine.
    let mut ok = b"5;".to_vec();
    ok.extend(std::iter::repeat_n(b'a', MAX_CHUNK_LINE_BYTES - 2));
    ok.extend_from_slice(b"\r\nhello\r\n0\r\n\r\n");
    assert_eq!(decode(CHUNKED, &ok, 1000).unwrap().0, b"hello");
}

#[test]
fn content_length_must_be_one_run_of_digits() {
    let cl = |values: &[&str]| {
        let mut length = None;
        for v in values {
            length = Some(merge_length(length, v.as_bytes()));
        }
        length.flatten()
    };
    assert_eq!(cl(&["42"]), Some(42));
    assert_eq!(cl(&["42", "42"]), Some(42));
    assert_eq!(cl(&["42, 42"]), Some(42));
    assert_eq!(cl(&["42", "43"]), None);
    assert_eq!(cl(&["+42"]), None);
    assert_eq!(cl(&["-1"]), None);
    assert_eq!(cl(&[""]), None);
    assert_eq!(cl(&["4 2"]), None);
    assert_eq!(cl(&["99999999999999999999"]), None, "over u64");
    assert_eq!(cl(&["18446744073709551615"]), None, "20 digits");
}

fn head(wire: &str, head_request: bool) -> Result<(response::Parts, Framing, bool), SendError> {
    let mut buf = BytesMut::from(wire.as_bytes());
    let raw = parse_head(&mut buf, &mut NameCache::default())?.expect("a complete head");
    assert!(buf.is_empty(), "the head is taken off the buffer");
    finish_head(raw, head_request).map(|(parts, framing, keep, _)| (parts, framing, keep))
}

#[test]
fn framing_follows_rfc_9112_section_6_3() {
    let (parts, framing, keep) = head(
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\n",
        false,
    )
    .unwrap();
    assert_eq!((framing, keep), (Framing::Length(5), true));
    assert_eq!(parts.headers["x-a"], "b");
    // HEAD, 204 and 304 have no body whatever they declare.
    assert_eq!(
        head("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true)
            .unwrap()
            .1,
        Framing::Done
    );
    assert_eq!(
        head("HTTP/1.1 204 No Content\r\n\r\n", false).unwrap().1,
        Framing::Done
    );
    assert_eq!(
        head(
            "HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
            false
        )
        .unwrap()
        .1,
        Framing::Done
    );
    // Transfer-Encoding wins over Content-Length; both: the connection is not reused, and
    // neither header is passed to hyper's server, which frames the client's answer itself.
    let (parts, framing, keep) = head(
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        false,
    )
    .unwrap();
    assert_eq!((framing, keep), (CHUNKED, false));
    assert!(!parts.headers.contains_key(header::CONTENT_LENGTH));
    assert!(!parts.headers.contains_key(header::TRANSFER_ENCODING));
    // A coding other than chunked last: the body runs to the close.
    assert_eq!(
        head(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            false
        )
        .unwrap()
        .1,
        Framing::UntilClose
    );
    let (_, framing, keep) = head("HTTP/1.1 200 OK\r\n\r\n", false).unwrap();
    assert_eq!((framing, keep), (Framing::UntilClose, false));
    assert!(matches!(
        head("HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n", false),
        Err(SendError::BadAnswer("invalid Content-Length"))
    ));
}

#[test]
fn hop_by_hop_headers_are_left_out_as_the_head_is_read() {
    let wire = "HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\
                Content-Length: 2\r\nX-A: 1\r\nUpgrade: h2c\r\nTrailer: x\r\n\r\n";
    let mut buf = BytesMut::from(wire.as_bytes());
    let mut names = NameCache::default();
    let (parts, _, keep, said) =
        finish_head(parse_head(&mut buf, &mut names).unwrap().unwrap(), false).unwrap();
    let mut left: Vec<&str> = parts.headers.keys().map(|k| k.as_str()).collect();
    left.sort();
    assert_eq!(left, ["content-length", "x-a"]);
    assert!(keep && said == Said::default());
    // A Connection header naming another header stays, for the front door's strip to use.
    let wire = "HTTP/1.1 200 OK\r\nConnection: X-A\r\nContent-Length: 2\r\nX-A: 1\r\n\r\n";
    let mut buf = BytesMut::from(wire.as_bytes());
    let (parts, _, _, said) =
        finish_head(parse_head(&mut buf, &mut names).unwrap().unwrap(), false).unwrap();
    assert!(said.names_hop_by_hop && parts.headers.contains_key(header::CONNECTION));
    // More headers than are placed inline are all kept, in order.
    let mut wire = String::from("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n");
    for i in 0..INLINE_HEADER_SPANS * 2 {
        wire.push_str(&format!("x-h: {i}\r\n"));
    }
    wire.push_str("\r\n");
    let (parts, ..) = finish_head(
        parse_head(
            &mut BytesMut::from(wire.as_bytes()),
            &mut NameCache::default(),
        )
        .unwrap()
        .unwrap(),
        false,
    )
    .unwrap();
    let values: Vec<String> = parts
        .headers
        .get_all("x-h")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    let want: Vec<String> = (0..INLINE_HEADER_SPANS * 2)
        .map(|i| i.to_string())
        .collect();
    assert_eq!(values, want);
}

#[test]
fn keep_alive_follows_the_version_and_connection_header() {
    let keep = |wire: &str| head(wire, false).unwrap().2;
    assert!(keep("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"));
    assert!(!keep(
        "HTTP/1.1 200 OK\r\nConnection: Close\r\nContent-Length: 0\r\n\r\n"
    ));
    assert!(!keep("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"));
    assert!(keep(
        "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n"
    ));
}

#[test]
fn answer_heads_over_the_limits_are_refused() {
    let mut many = String::from("HTTP/1.1 200 OK\r\n");
    for i in 0..=MAX_ANSWER_HEADERS {
        many.push_str(&format!("x-{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let parse = |wire: &[u8]| parse_head(&mut BytesMut::from(wire), &mut NameCache::default());
    assert!(matches!(
        parse(many.as_bytes()),
        Err(SendError::BadAnswer("too many headers in the answer"))
    ));
    assert!(matches!(
        parse(b"HTTP/1.1 200 OK\r\nBad Name: v\r\n\r\n"),
        Err(SendError::BadAnswer(_))
    ));
    assert!(matches!(parse(b"HTTP/1.1 200 OK\r\nX: v"), Ok(None)));
    assert!(matches!(
        parse(b"HTTP/1.1 999999 OK\r\n\r\n"),
        Err(SendError::BadAnswer(_))
    ));
}

#[test]
fn the_request_head_carries_the_front_door_s_framing_only() {
    let (mut parts, ()) = http::Request::post("/invocations?x=1")
        .header("host", "h")
        .header("content-length", "999")
        .header("x-a", "b")
        .body(())
        .unwrap()
        .into_parts();
    let mut out = Vec::new();
    encode_head(&mut out, &parts, BodyFraming::Length(3));
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "POST /invocations?x=1 HTTP/1.1\r\nhost: h\r\nx-a: b\r\ncontent-length: 3\r\n\r\n"
    );
    let mut out = Vec::new();
    encode_head(&mut out, &parts, BodyFraming::Chunked);
    assert!(String::from_utf8(out)
        .unwrap()
        .ends_with("x-a: b\r\ntransfer-encoding: chunked\r\n\r\n"));
    // No body: the client's own Content-Length (0 for an empty POST) passes, once.
    parts
        .headers
        .append("content-length", HeaderValue::from_static("0"));
    let mut out = Vec::new();
    encode_head(&mut out, &parts, BodyFraming::None);
    assert_eq!(
        String::from_utf8(out)
            .unwrap()
            .matches("content-length")
            .count(),
        1
    );
}

proptest::proptest! {
    /// Any bytes as a chunked or length-framed answer, fed in any pieces: an answer, an error,
    /// or a wait for more, never a panic; and the data never exceeds what was sent.
    #[test]
    fn any_bytes_decode_or_fail_cleanly(
        wire in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512),
        piece in 1usize..64,
        length in 0u64..600,
    ) {
        for framing in [CHUNKED, Framing::Length(length), Framing::UntilClose] {
            if let Ok((data, _)) = decode(framing, &wire, piece) {
                proptest::prop_assert!(data.len() <= wire.len());
            }
        }
    }

    /// A chunked encoding of any data, cut anywhere, gives the data back.
    #[test]
    fn chunked_data_round_trips(
        chunks in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 1..40), 0..8),
        piece in 1usize..32,
    ) {
        let mut wire = Vec::new();
        let mut want = Vec::new();
        for chunk in &chunks {
            push_frame(&mut wire, Some(Ok(Frame::data(Bytes::copy_from_slice(chunk)))), BodyFraming::Chunked).unwrap();
            want.extend_from_slice(chunk);
        }
        push_frame(&mut wire, None, BodyFraming::Chunked).unwrap();
        let (data, rest) = decode(CHUNKED, &wire, piece).unwrap();
        proptest::prop_assert_eq!(data, want);
        proptest::prop_assert!(rest.is_empty());
    }
}

#[tokio::test(start_paused = true)]
async fn a_connection_s_timer_is_kept_within_the_slack_and_never_set_before_a_request_is_due() {
    let now = tokio::time::Instant::now();
    let slack = Duration::from_millis(100);
    let due = |ms: u64| Due {
        at: now + Duration::from_millis(ms),
        slack,
    };
    let mut timer = Box::pin(tokio::time::sleep_until(now));
    let mut moved = 0;
    // Requests 10 ms apart, then a shorter timeout (a reload), then one far later.
    let dues: Vec<u64> = (0..50).map(|i| 1000 + i * 10).chain([700, 5000]).collect();
    for ms in dues {
        let before = timer.deadline();
        due(ms).arm(timer.as_mut());
        let set = timer.deadline();
        if set != before {
            moved += 1;
        }
        assert!(set >= due(ms).at, "{ms}: never before the request is due");
        assert!(set <= due(ms).at + slack, "{ms}: at most the slack after");
    }
    // 500 ms of requests with a 100 ms slack: the timer moved about every 100 ms, not 50 times;
    // plus the reload and the late one.
    assert!((5..=9).contains(&moved), "moved {moved} times");
}

#[test]
fn a_whole_answer_reads_to_its_framing_s_end() {
    let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nhello\nNEXT"[..]);
    let (parts, body) = read_whole_answer(&mut buf, &mut NameCache::default()).unwrap();
    assert_eq!((parts.status.as_u16(), body), (200, 6));
    assert_eq!(&buf[..], b"NEXT");
    let mut cut = BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nhel"[..]);
    assert!(matches!(
        read_whole_answer(&mut cut, &mut NameCache::default()),
        Err(SendError::BadAnswer(_))
    ));
}

/// A whole answer head (not a HEAD request's) read with the connection's `names`.
fn read_with(wire: &[u8], names: &mut NameCache) -> (response::Parts, Framing, bool, Said) {
    let raw = parse_head(&mut BytesMut::from(wire), names)
        .expect("a valid head")
        .expect("a complete head");
    finish_head(raw, false).expect("a valid framing")
}

#[test]
fn names_kept_from_the_last_answer_give_what_a_fresh_parse_gives() {
    let answers: [&[u8]; 5] = [
        b"HTTP/1.1 200 OK\r\nServer: m\r\nContent-Type: text/event-stream\r\nX-Id: 1\r\n\
          Connection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n",
        // The same names: every one from the cache.
        b"HTTP/1.1 200 OK\r\nServer: m\r\nContent-Type: text/event-stream\r\nX-Id: 2\r\n\
          Connection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n",
        // Other names at the same places, one only in case: none may be taken for the old.
        b"HTTP/1.1 200 OK\r\nserver: m\r\nX-Id: 3\r\nContent-Type: application/json\r\n\
          Connection: close\r\nContent-Length: 2\r\n\r\n",
        // Fewer names, then more again, and one longer than is kept.
        b"HTTP/1.1 204 No Content\r\nServer: m\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nServer: m\r\nX-Long-Name-Long-Name-Long-Name-Long-Name-Long-Name-Long-Name-Long: 1\r\n\
          Keep-Alive: timeout=5\r\nContent-Type: text/event-stream\r\nContent-Length: 2\r\n\r\n",
    ];
    let mut names = NameCache::default();
    for round in 0..2 {
        for wire in answers {
            let cached = read_with(wire, &mut names);
            let fresh = read_with(wire, &mut NameCache::default());
            let text = String::from_utf8_lossy(wire);
            assert_eq!(cached.0.headers, fresh.0.headers, "round {round}: {text}");
            assert_eq!(
                (cached.1, cached.2, cached.3),
                (fresh.1, fresh.2, fresh.3),
                "round {round}: {text}"
            );
        }
    }
    assert!(names.entries.len() <= CACHED_NAMES);
    // What the heads said, read through the cache: SSE, hop-by-hop headers left out.
    let (parts, framing, keep, said) = read_with(answers[1], &mut names);
    assert_eq!((framing, keep), (CHUNKED, true));
    assert!(said.event_stream && !said.names_hop_by_hop);
    let mut left: Vec<&str> = parts.headers.keys().map(|k| k.as_str()).collect();
    left.sort();
    assert_eq!(left, ["content-type", "server", "x-id"]);
    let (_, _, keep, said) = read_with(answers[2], &mut names);
    assert!(!keep && !said.event_stream);
}

#[test]
fn only_a_first_content_type_of_text_event_stream_is_server_sent_events() {
    let said = |wire: &[u8]| read_with(wire, &mut NameCache::default()).3.event_stream;
    assert!(said(
        b"HTTP/1.1 200 OK\r\nContent-Type:  TEXT/Event-Stream; charset=utf-8\r\n\r\n"
    ));
    assert!(said(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\xff\r\n\r\n"
    ));
    assert!(!said(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-strea\r\n\r\n"
    ));
    assert!(!said(
        b"HTTP/1.1 200 OK\r\nX-Type: text/event-stream\r\n\r\n"
    ));
    assert!(!said(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Type: text/event-stream\r\n\r\n"
    ));
}
