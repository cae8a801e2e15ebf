use super::*;
use crate::manifest::RuntimeKind;
use crate::status::AttemptRecord;

fn status(task: &str, phase: Phase) -> TaskStatus {
    let mut s = TaskStatus::new(task, task, "sha256:x", Utc::now());
    s.phase = phase;
    s
}

#[test]
fn api_dashboard_escapes_what_users_control() {
    assert_eq!(
        esc(r#"<script>alert("x")</script> & 'y'"#),
        "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;y&#39;"
    );
    let hostile = "<script>alert(1)</script>";
    let mut s = status(hostile, Phase::Failed);
    s.name = "<img src=x onerror=alert(2)>".into();
    s.message = Some("\"><b>m</b>".into());
    s.log_tail = Some("<b>bold</b>\n".into());
    s.result = Some(serde_json::json!({"html": "</pre><script>x()</script>"}));
    let index = render_index(Ok(std::slice::from_ref(&s)), false, Utc::now());
    let one = render_task(hostile, Ok(Some(&s)), false, Utc::now());
    for page in [&index, &one] {
        // The only script element is the page's own, by its source.
        assert_eq!(page.matches("<script").count(), 1, "{page}");
        assert!(!page.contains("<img"), "{page}");
        assert!(!page.contains("<b>bold") && !page.contains("<b>m"), "{page}");
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    }
    assert!(
        index.contains(r#"href="/tasks/%3Cscript%3Ealert%281%29%3C/script%3E""#),
        "{index}"
    );
    assert!(one.contains("&lt;/pre&gt;&lt;script&gt;x()"));
}

#[test]
fn api_dashboard_table_has_a_row_per_task_counts_and_fan_out_progress() {
    let mut fan = status("jobs/fan", Phase::Running);
    for (i, phase) in [Phase::Succeeded, Phase::Running, Phase::Pending]
        .into_iter()
        .enumerate()
    {
        fan.indexes.push(crate::status::IndexStatus {
            index: i as u32,
            phase,
            attempt: 1,
            exit_code: None,
            result: None,
            reason: None,
            message: None,
            next_attempt_at: None,
        });
    }
    let now = Utc::now();
    let mut done = status("done", Phase::Succeeded);
    done.attempt = 1;
    done.attempts.push(AttemptRecord {
        number: 1,
        id: None,
        placement: None,
        semaphores: Vec::new(),
        runtime: RuntimeKind::Process,
        container: "skiff-done-1".into(),
        index: None,
        created_at: Some(now - chrono::Duration::seconds(130)),
        started_at: Some(now - chrono::Duration::seconds(125)),
        finished_at: Some(now - chrono::Duration::seconds(5)),
        exit_code: Some(0),
        completed_by: None,
        reason: None,
        message: None,
        exit_rule: None,
    });
    let mut waiting = status("queued", Phase::Pending);
    waiting.reason = Some(crate::status::Reason::WaitingForSlot);
    waiting.message = Some("max-running 1/1".into());
    let list = vec![done, fan, waiting];
    let page = render_index(Ok(&list), false, now);
    assert_eq!(page.matches("<tr data-task=").count(), 3);
    assert!(
        page.contains(r#"WaitingForSlot<div class="why">max-running 1/1</div>"#),
        "{page}"
    );
    assert!(page.contains(r#"data-phase="Running">Running <b>1</b>"#), "{page}");
    assert!(page.contains(r#"data-phase="Succeeded">Succeeded <b>1</b>"#));
    assert!(page.contains(r#"<td class="num">1/3</td>"#));
    // Age from the first attempt's creation; duration from start to finish.
    assert!(
        page.contains(r#"<td class="num">2m 10s</td><td class="num">2m 0s</td><td>process</td>"#),
        "{page}"
    );
}

#[test]
fn api_dashboard_locked_pages_show_no_data() {
    let page = render_index(Err(Locked), true, Utc::now());
    assert!(page.contains(r#"data-auth="required""#));
    assert!(page.contains("requires its API token"));
    assert_eq!(page.matches("<tr data-task=").count(), 0);
}

#[test]
fn api_dashboard_refuses_keys_outside_the_root() {
    for good in ["a", "jobs/thumb", "<script>alert(1)</script>", "a.b/c..d"] {
        assert!(TaskKey::parse(good).is_ok(), "{good}");
    }
    for bad in [
        "",
        "/etc/x",
        "../x",
        "a/../b",
        "a//b",
        "a/",
        ".skiff/secret",
        "a/./b",
        "a\\b",
        "a\0b",
    ] {
        assert!(TaskKey::parse(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn api_dashboard_tells_cross_site_requests() {
    let headers = |pairs: &[(&'static str, &'static str)]| {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, HeaderValue::from_static(v));
        }
        map
    };
    assert!(!cross_site(&headers(&[])), "curl");
    assert!(!cross_site(&headers(&[
        ("host", "127.0.0.1:8466"),
        ("origin", "http://127.0.0.1:8466")
    ])));
    assert!(!cross_site(&headers(&[
        ("sec-fetch-site", "same-origin"),
        ("host", "a:1"),
        ("origin", "http://a:1")
    ])));
    assert!(cross_site(&headers(&[
        ("host", "127.0.0.1:8466"),
        ("origin", "http://evil.example")
    ])));
    assert!(cross_site(&headers(&[("host", "127.0.0.1:8466"), ("origin", "null")])));
    assert!(cross_site(&headers(&[("sec-fetch-site", "cross-site")])));
    assert!(cross_site(&headers(&[("sec-fetch-site", "same-site")])));
}

#[test]
fn api_dashboard_human_durations() {
    assert_eq!(human(-3), "0s");
    assert_eq!(human(59), "59s");
    assert_eq!(human(61), "1m 1s");
    assert_eq!(human(3 * 3600 + 120), "3h 2m");
    assert_eq!(human(2 * 86400 + 3600), "2d 1h");
    assert_eq!(human_duration(340), "0.3s");
    assert_eq!(human_duration(9_960), "10.0s");
    assert_eq!(human_duration(75_000), "1m 15s");
}
