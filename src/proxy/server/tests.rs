use super::*;

/// Parses `wire` as one request head with a fresh names cache.
fn parse(wire: &str) -> Result<Option<RequestHead>, Refusal> {
    parse_request(&mut BytesMut::from(wire), &mut NameCache::default())
}

fn head(wire: &str) -> RequestHead {
    parse(wire).unwrap().unwrap()
}

fn refused(wire: &str) -> Refusal {
    parse(wire).unwrap_err()
}

#[test]
fn a_request_head_gives_its_method_target_headers_and_framing() {
    let h = head("POST /invocations?x=1 HTTP/1.1\r\nHost: m\r\nContent-Type: application/json\r\nContent-Length: 5\r\nX-Amzn-SageMaker-Inference-Component: a\r\n\r\nhello");
    assert_eq!(h.parts.method, Method::POST);
    assert_eq!(h.parts.uri, "/invocations?x=1");
    assert_eq!(h.parts.version, Version::HTTP_11);
    assert_eq!(h.framing, Framing::Length(5));
    assert!(h.keep_alive && !h.expect_continue);
    let names: Vec<&str> = h.parts.headers.keys().map(|k| k.as_str()).collect();
    // Content-Length is the front door's to write (from the body's framing).
    assert_eq!(
        names,
        [
            "host",
            "content-type",
            "x-amzn-sagemaker-inference-component"
        ]
    );
    let h = head("GET / HTTP/1.1\r\n\r\n");
    assert_eq!(h.framing, Framing::Done);
    let h = head("POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
    assert_eq!(h.framing, Framing::Chunked(Chunk::Size));
    assert!(
        h.parts.headers.is_empty(),
        "Transfer-Encoding is hop-by-hop"
    );
}

#[test]
fn only_the_bytes_of_the_head_are_taken() {
    let mut buf = BytesMut::from("GET /a HTTP/1.1\r\nHost: m\r\n\r\nGET /b HTTP/1.1\r\n");
    let h = parse_request(&mut buf, &mut NameCache::default())
        .unwrap()
        .unwrap();
    assert_eq!(h.parts.uri, "/a");
    assert_eq!(&buf[..], b"GET /b HTTP/1.1\r\n", "the next request stays");
    assert!(parse_request(&mut buf, &mut NameCache::default())
        .unwrap()
        .is_none());
}

#[test]
fn keep_alive_follows_the_version_and_connection_header() {
    for (wire, keep) in [
        ("GET / HTTP/1.1\r\n\r\n", true),
        ("GET / HTTP/1.1\r\nConnection: close\r\n\r\n", false),
        (
            "GET / HTTP/1.1\r\nConnection: Keep-Alive, CLOSE\r\n\r\n",
            false,
        ),
        ("GET / HTTP/1.0\r\n\r\n", false),
        ("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", true),
    ] {
        assert_eq!(head(wire).keep_alive, keep, "{wire:?}");
    }
}

#[test]
fn hop_by_hop_headers_and_expect_continue_are_read_and_left_out() {
    let h = head(
        "POST / HTTP/1.1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Authorization: x\r\n\
         Expect: 100-continue\r\nContent-Length: 1\r\nConnection: keep-alive\r\nX-End: 1\r\n\r\n",
    );
    assert!(h.expect_continue);
    let names: Vec<&str> = h.parts.headers.keys().map(|k| k.as_str()).collect();
    assert_eq!(names, ["x-end"]);
    // A Connection header naming another header stays, for `strip_hop_by_hop`; another
    // expectation passes on.
    let h = head("GET / HTTP/1.1\r\nConnection: X-Secret\r\nExpect: something\r\n\r\n");
    assert!(!h.expect_continue);
    assert!(h.parts.headers.contains_key(header::CONNECTION));
    assert!(h.parts.headers.contains_key(header::EXPECT));
}

#[test]
fn smuggling_shapes_and_malformed_heads_are_refused() {
    for (wire, status) in [
        (
            "POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            400,
        ),
        (
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
            400,
        ),
        (
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            400,
        ),
        ("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (
            "POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            400,
        ),
        ("POST / HTTP/1.1\r\nContent-Length: 5, 6\r\n\r\n", 400),
        ("POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
        (
            "POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
            400,
        ),
        ("NOT HTTP AT ALL\r\n\r\n", 400),
        ("GET / HTTP/2.0\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\nBad Name: x\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\nX: a\x01b\r\n\r\n", 400),
        ("G\0T / HTTP/1.1\r\n\r\n", 400),
    ] {
        assert_eq!(refused(wire).status, status, "{wire:?}");
    }
    let many = format!(
        "GET / HTTP/1.1\r\n{}\r\n",
        "X: 1\r\n".repeat(MAX_REQUEST_HEADERS + 1)
    );
    assert_eq!(refused(&many), HEAD_TOO_LARGE);
    // Agreeing lengths are one length.
    let h = head("POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n");
    assert_eq!(h.framing, Framing::Length(5));
}

#[test]
fn names_kept_from_the_last_request_give_what_a_fresh_parse_gives() {
    let mut names = NameCache::default();
    let wires = [
        "GET /a HTTP/1.1\r\nHost: m\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        "GET /b HTTP/1.1\r\nHost: m\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        // Same places, other names: each is parsed again.
        "POST /c HTTP/1.1\r\nContent-Length: 2\r\nHOST: m\r\nExpect: 100-continue\r\n\r\nhi",
        "GET /d HTTP/1.1\r\nHost: m\r\nAccept: */*\r\nConnection: close\r\n\r\n",
    ];
    for wire in wires {
        let cached = parse_request(&mut BytesMut::from(wire), &mut names)
            .unwrap()
            .unwrap();
        let fresh = head(wire);
        assert_eq!(cached.parts.headers, fresh.parts.headers, "{wire:?}");
        assert_eq!(
            (cached.framing, cached.keep_alive, cached.expect_continue),
            (fresh.framing, fresh.keep_alive, fresh.expect_continue),
            "{wire:?}"
        );
    }
}

#[test]
fn an_answer_head_carries_the_front_door_s_framing_and_a_date_once() {
    let answer = |status: u16, headers: &[(&str, &str)], body: Out, keep: bool, http10: bool| {
        let mut r = http::Response::new(());
        *r.status_mut() = StatusCode::from_u16(status).unwrap();
        for (name, value) in headers {
            r.headers_mut().append(
                header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                http::HeaderValue::from_str(value).unwrap(),
            );
        }
        let (parts, ()) = r.into_parts();
        let mut out = Vec::new();
        encode_answer_head(&mut out, &parts, body, keep, http10);
        String::from_utf8(out).unwrap()
    };
    let text = answer(
        200,
        &[("content-type", "text/plain"), ("content-length", "99")],
        Out::Length(5),
        true,
        false,
    );
    assert!(text.starts_with("HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ndate: "));
    assert!(
        text.ends_with(" GMT\r\ncontent-length: 5\r\n\r\n"),
        "{text}"
    );
    assert_eq!(text.matches("content-length").count(), 1, "{text}");
    // A HEAD answer keeps the copy's length; one with a Date gets no second.
    let text = answer(
        200,
        &[("content-length", "99"), ("date", "then")],
        Out::None,
        true,
        false,
    );
    assert_eq!(
        text,
        "HTTP/1.1 200 OK\r\ncontent-length: 99\r\ndate: then\r\n\r\n"
    );
    let text = answer(200, &[], Out::Chunked, false, false);
    assert!(
        text.ends_with("transfer-encoding: chunked\r\nconnection: close\r\n\r\n"),
        "{text}"
    );
    let text = answer(499, &[], Out::Length(0), true, true);
    assert!(text.starts_with("HTTP/1.1 499 \r\n"), "{text}");
    assert!(text.ends_with("connection: keep-alive\r\n\r\n"), "{text}");
}

#[test]
fn a_head_is_parsed_again_only_when_new_bytes_may_end_it() {
    let wire = b"GET / HTTP/1.1\r\nHost: m\r\n\r\n";
    let end = wire.len();
    for from in 1..end {
        let seen = &wire[..from + 1];
        let complete = from + 1 == end;
        // Each byte arriving alone: the one that ends the head is seen.
        assert_eq!(may_end_head(seen, from), complete, "{from}");
    }
    assert!(may_end_head(b"GET / HTTP/1.1\n\n", 15));
    assert!(!may_end_head(b"GET / HTTP/1.1\r\nHost: m\r\n", 20));
}

proptest::proptest! {
    /// However a head arrives in pieces, it is incomplete until its last byte and then gives
    /// what it gives whole; and no bytes make the parser panic.
    #[test]
    fn a_head_in_any_pieces_parses_as_it_does_whole(split in 1usize..60, junk in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
        let wire = b"POST /x HTTP/1.1\r\nHost: m\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\n";
        let split = split.min(wire.len() - 1);
        let mut buf = BytesMut::from(&wire[..split]);
        let mut names = NameCache::default();
        proptest::prop_assert!(parse_request(&mut buf, &mut names).unwrap().is_none());
        buf.extend_from_slice(&wire[split..]);
        let h = parse_request(&mut buf, &mut names).unwrap().unwrap();
        proptest::prop_assert_eq!(h.framing, Framing::Chunked(Chunk::Size));
        proptest::prop_assert!(buf.is_empty());
        let _ = parse_request(&mut BytesMut::from(&junk[..]), &mut names);
    }

    /// A body chunk-encoded for the client decodes to itself with the copy's decoder.
    #[test]
    fn chunked_data_round_trips(pieces in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 0..300), 0..8)) {
        let mut wire = Vec::new();
        for piece in &pieces {
            push_data(&mut wire, piece, Out::Chunked);
        }
        wire.extend_from_slice(b"0\r\n\r\n");
        let mut buf = BytesMut::from(&wire[..]);
        let mut framing = Framing::Chunked(Chunk::Size);
        let mut decoded = Vec::new();
        loop {
            match step(&mut framing, &mut buf).unwrap() {
                Step::Data(d) => decoded.extend_from_slice(&d),
                Step::End => break,
                Step::NeedMore => proptest::prop_assert!(false, "cut short"),
            }
        }
        proptest::prop_assert_eq!(decoded, pieces.concat());
        proptest::prop_assert!(buf.is_empty());
    }
}

#[test]
fn hex_has_no_leading_zeros() {
    let mut buf = [0u8; 16];
    assert_eq!(hex(0, &mut buf), b"0");
    assert_eq!(hex(0xabc, &mut buf), b"abc");
    assert_eq!(hex(u64::MAX, &mut buf), b"ffffffffffffffff");
}

#[tokio::test]
async fn an_idle_connection_keeps_little_buffer_room_and_never_drops_bytes_sent_ahead() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let _peer = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let mut client = Client::new(listener.accept().await.unwrap().0);

    // Room a large answer and a large head left behind is given back.
    client.write = Vec::with_capacity(WRITE_AT_BYTES + 100);
    client.read = BytesMut::with_capacity(MAX_HEADER_BYTES);
    client.shed_buffers();
    assert!(client.write.capacity() <= IDLE_BUFFER_BYTES);
    assert!(client.read.capacity() <= IDLE_BUFFER_BYTES);

    // Room under the bound is kept for the next request (no allocation a request).
    client.write = Vec::with_capacity(4096);
    client.read = BytesMut::with_capacity(4096);
    client.shed_buffers();
    assert_eq!(client.write.capacity(), 4096);
    assert!(client.read.capacity() >= 4096);

    // A pipelined request already read stays, whatever room it holds.
    client.read = BytesMut::with_capacity(MAX_HEADER_BYTES);
    client.read.extend_from_slice(b"GET / HTTP/1.1\r\n");
    client.shed_buffers();
    assert_eq!(&client.read[..], b"GET / HTTP/1.1\r\n");
}
