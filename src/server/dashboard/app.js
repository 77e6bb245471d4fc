// The dashboard's client, plain JavaScript with no build step (src/server/dashboard.rs serves
// it): the pairs table, the signal feed, a pair's sparklines, and one WebSocket that resumes
// with `resume_from` after every drop, as a bot would (docs/protocol.md).
'use strict';
(() => {
  const $ = (id) => document.getElementById(id);
  const FEED_MAX = 300;
  const BACKLOG = 100; // events replayed on the first connection, to fill the feed
  const st = {
    epoch: null, seq: 0, gaps: 0, resumes: 0, duplicates: 0, connections: 0,
    ws: null, pairs: new Map(), events: [], scores: new Map(),
    sort: { key: 'liquidity', dir: 'desc' }, selected: null, retry: 500, dirty: false,
    simulated: false, lastError: null, charts: [],
  };
  // For tests and for curious users: the connection's counters and a way to drop it.
  window.dexpulse = st;

  const params = new URLSearchParams(location.search);
  $('key').value = params.get('token') || localStorage.getItem('dexpulse.key') || '';
  // The key is read once and leaves the address bar and the history at once (it would stay in
  // both, and in bookmarks and screenshots); the page keeps it in memory.
  if (params.has('token')) {
    params.delete('token');
    const rest = params.toString();
    history.replaceState(null, '', location.pathname + (rest ? '?' + rest : '') + location.hash);
  }
  const token = () => {
    const k = $('key').value.trim();
    return k ? '?token=' + encodeURIComponent(k) : '';
  };

  const compact = new Intl.NumberFormat('en', { notation: 'compact', maximumFractionDigits: 2 });
  const usd = (v) => (v === null || v === undefined ? '–' : '$' + compact.format(v));
  const pct = (v) => (v === null || v === undefined ? '–' : (v > 0 ? '+' : '') + v.toFixed(2) + '%');
  const price = (s) => {
    if (s === null || s === undefined) return '–';
    const v = Number(s);
    return '$' + (v >= 1 ? v.toFixed(4) : v.toPrecision(4));
  };
  const cls = (v) => (v > 0 ? 'up' : v < 0 ? 'down' : '');
  const keyOf = (chain, address) => chain + ':' + address;
  const el = (tag, props, ...kids) => {
    const e = document.createElement(tag);
    Object.assign(e, props || {});
    for (const k of kids) e.append(k);
    return e;
  };
  const simTag = () => el('span', { className: 'tag-sim', textContent: ' SIM' });
  // A symbol that could pass for another: characters the server replaced (U+FFFD stands for an
  // invisible or reordering one), or Latin letters mixed with Greek or Cyrillic look-alikes.
  const suspicious = (s) => /\uFFFD|[\u200B-\u200F\u202A-\u202E\u2066-\u2069\uFEFF]/.test(s)
    || (/[A-Za-z]/.test(s) && /[\u0370-\u03FF\u0400-\u04FF]/.test(s));
  // A token symbol as text, cut with an ellipsis when long (the whole in its tooltip), marked
  // when suspicious.
  const sym = (s) => {
    const text = s || '?';
    const span = el('span', { className: 'sym', textContent: text, title: text });
    if (suspicious(text)) {
      span.classList.add('suspicious');
      span.title = text + ' (hidden or look-alike characters: not necessarily the token it looks like)';
      span.prepend(el('span', { className: 'warn', textContent: '⚠ ' }));
    }
    return span;
  };
  const pairNameOf = (base, quote) => el('span', { className: 'pairname' }, sym(base), '/', sym(quote));

  function setConn(state, text) {
    const c = $('conn');
    c.dataset.state = state;
    c.textContent = text || state;
  }

  function counters() {
    $('epoch').textContent = st.epoch || '–';
    $('seq').textContent = String(st.seq);
    $('gaps').textContent = String(st.gaps);
    $('resumes').textContent = String(st.resumes);
    $('simulated').hidden = !st.simulated;
  }

  // ---- the connection ----

  function connect() {
    const ws = new WebSocket((location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/v1/ws' + token());
    st.ws = ws;
    setConn('connecting');
    ws.onmessage = (m) => {
      let msg;
      try { msg = JSON.parse(m.data); } catch (_) { return; }
      handle(ws, msg);
    };
    let opened = false;
    ws.onopen = () => { opened = true; };
    ws.onclose = (ev) => {
      if (st.ws !== ws) return;
      setConn('reconnecting', 'reconnecting' + (ev.reason ? ' (' + ev.reason + ')' : ''));
      if (!opened) {
        // A refused upgrade gives the page no status: ask an HTTP route the same question.
        fetch('/v1/signals?latest=1' + (token() ? '&' + token().slice(1) : '')).then((r) => {
          if (st.ws !== ws) return;
          if (r.status === 401) setConn('reconnecting', 'reconnecting: the API key is missing or wrong');
          else if (r.status === 429) setConn('reconnecting', 'reconnecting: too many connections or wrong keys');
          else if (r.status === 503) setConn('reconnecting', 'reconnecting: the server is full');
        }).catch(() => {});
      }
      setTimeout(connect, st.retry);
      st.retry = Math.min(st.retry * 2, 10000);
    };
  }

  function send(ws, op) {
    if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(op));
  }

  function handle(ws, msg) {
    switch (msg.type) {
      case 'welcome': {
        st.connections += 1;
        let from;
        if (st.epoch === msg.epoch && st.connections > 1) {
          from = st.seq; // a resume: everything after the last seq we have, exactly
          st.resumes += 1;
        } else {
          if (st.epoch !== null) st.gaps += 1; // a new epoch: what came between is unknown
          st.epoch = msg.epoch;
          from = Math.max(0, msg.head_seq - BACKLOG);
          st.seq = from;
        }
        send(ws, { op: 'subscribe', id: 'signals', channel: 'signals', resume_from: { epoch: st.epoch, seq: from } });
        send(ws, { op: 'subscribe', id: 'pairs', channel: 'pairs' });
        counters();
        break;
      }
      case 'subscribed':
        if (msg.channel === 'signals') {
          st.retry = 500;
          setConn('live');
          // Older than the server keeps: on the first connection that is just where we start.
          if (msg.recovered === false && st.connections === 1 && msg.oldest_seq) {
            st.seq = Math.max(st.seq, msg.oldest_seq - 1);
          }
        }
        break;
      case 'signal':
        if (msg.seq <= st.seq) { st.duplicates += 1; break; }
        if (msg.seq !== st.seq + 1) st.gaps += 1;
        st.seq = msg.seq;
        addEvent(msg.seq, msg.event);
        counters();
        break;
      case 'lagged':
        st.gaps += 1;
        counters();
        break;
      case 'pair':
        upsertPair(msg.pair);
        break;
      case 'error':
        st.lastError = msg;
        setConn(st.ws === ws ? 'live' : 'connecting', 'server says: ' + (msg.message || msg.code));
        break;
      default:
        break;
    }
  }

  // ---- pairs ----

  function upsertPair(p) {
    const k = keyOf(p.chain, p.pair_address);
    st.pairs.set(k, p);
    if (p.source === 'simulator') st.simulated = true;
    const chains = $('f-chain');
    if (![...chains.options].some((o) => o.value === p.chain)) chains.append(el('option', { value: p.chain, textContent: p.chain }));
    st.dirty = true;
  }

  const sortValue = {
    chain: (p) => p.chain, dex: (p) => p.dex_id || '', pair: (p) => (p.base_token && p.base_token.symbol) || p.pair_address,
    price: (p) => (p.price_usd === null ? null : Number(p.price_usd)), m5: (p) => p.price_change_pct.m5,
    h1: (p) => p.price_change_pct.h1, volume: (p) => p.volume_usd.h1, liquidity: (p) => p.liquidity_usd,
    open: (p) => (p.open_signals || []).length,
  };

  function filters() {
    return {
      chain: $('f-chain').value, kind: $('f-kind').value, direction: $('f-direction').value,
      score: Number($('f-score').value) || 0,
    };
  }

  function pairShown(p, f) {
    if (f.chain && p.chain !== f.chain) return false;
    if (f.kind && !(p.open_signals || []).includes(f.kind)) return false;
    if (f.direction && p.stance !== f.direction) return false;
    if (f.score > 0 && (st.scores.get(keyOf(p.chain, p.pair_address)) || 0) < f.score) return false;
    return true;
  }

  function renderPairs() {
    st.dirty = false;
    counters();
    const f = filters();
    const get = sortValue[st.sort.key];
    const rows = [...st.pairs.values()].filter((p) => pairShown(p, f));
    const sign = st.sort.dir === 'asc' ? 1 : -1;
    rows.sort((a, b) => {
      const x = get(a), y = get(b);
      if (x === null || x === undefined) return 1;
      if (y === null || y === undefined) return -1;
      return (x < y ? -1 : x > y ? 1 : 0) * sign;
    });
    const body = el('tbody');
    for (const p of rows) {
      const k = keyOf(p.chain, p.pair_address);
      const name = el('td', {}, pairNameOf(p.base_token.symbol, p.quote_token.symbol));
      if (p.source === 'simulator') name.append(simTag());
      const tr = el('tr', { className: st.selected === k ? 'selected' : '' },
        el('td', { className: 'clip', textContent: p.chain, title: p.chain }),
        el('td', { className: 'clip', textContent: p.dex_id || '–', title: p.dex_id || '' }), name,
        el('td', { className: 'num', textContent: price(p.price_usd) }),
        el('td', { className: 'num ' + cls(p.price_change_pct.m5), textContent: pct(p.price_change_pct.m5) }),
        el('td', { className: 'num ' + cls(p.price_change_pct.h1), textContent: pct(p.price_change_pct.h1) }),
        el('td', { className: 'num', textContent: usd(p.volume_usd.h1) }),
        el('td', { className: 'num', textContent: usd(p.liquidity_usd) }),
        el('td', { textContent: (p.open_signals || []).join(', ') }));
      tr.dataset.pair = k;
      tr.onclick = () => { location.hash = 'pair=' + encodeURIComponent(k); };
      body.append(tr);
    }
    $('pairs').replaceChild(body, $('pairs').tBodies[0]);
    $('pairs-count').textContent = rows.length + ' of ' + st.pairs.size;
    for (const th of document.querySelectorAll('th[data-sort]')) {
      if (th.dataset.sort === st.sort.key) th.dataset.dir = st.sort.dir; else delete th.dataset.dir;
    }
  }

  for (const th of document.querySelectorAll('th[data-sort]')) {
    th.onclick = () => {
      const k = th.dataset.sort;
      st.sort = { key: k, dir: st.sort.key === k && st.sort.dir === 'desc' ? 'asc' : 'desc' };
      renderPairs();
    };
  }

  // ---- the feed ----

  function addEvent(seq, e) {
    if (e.source === 'simulator') st.simulated = true;
    const k = keyOf(e.chain, e.pair_address);
    if (e.phase === 'opened' || e.phase === 'escalated') st.scores.set(k, Math.max(st.scores.get(k) || 0, e.score));
    const kinds = $('f-kind');
    if (![...kinds.options].some((o) => o.value === e.kind)) kinds.append(el('option', { value: e.kind, textContent: e.kind }));
    st.events.unshift({ seq, e });
    if (st.events.length > FEED_MAX) {
      // The feed shows the kept events only: one that leaves the buffer leaves the list too,
      // whatever the filter (a filtered list is never trimmed by its length).
      const gone = st.events.pop();
      const item = document.querySelector(`#feed > li[data-seq="${gone.seq}"]`);
      if (item) item.remove();
    }
    const f = filters();
    if (eventShown(e, f)) {
      $('feed').prepend(eventItem(seq, e));
      while ($('feed').children.length > FEED_MAX) $('feed').lastChild.remove();
    }
    $('feed-count').textContent = String(st.events.length);
  }

  function eventShown(e, f) {
    return (!f.chain || e.chain === f.chain) && (!f.kind || e.kind === f.kind)
      && (!f.direction || e.direction === f.direction) && e.score >= f.score;
  }

  function eventItem(seq, e) {
    const k = keyOf(e.chain, e.pair_address);
    const pairName = pairNameOf((e.base_token && e.base_token.symbol) || e.pair_address, e.quote_token && e.quote_token.symbol);
    const head = el('div', { className: 'head' },
      el('span', { className: 'kind ' + (e.direction === 'bullish' ? 'up' : e.direction === 'bearish' ? 'down' : ''), textContent: e.kind }),
      el('span', { textContent: e.phase }),
      el('span', { textContent: 'score ' + e.score }),
      el('span', { className: 'sev-' + e.severity, textContent: e.severity }),
      el('a', { href: '#pair=' + encodeURIComponent(k) }, e.chain + ' ', pairName),
      el('small', { textContent: '#' + seq + ' ' + (e.observed_at || '') }));
    if (e.source === 'simulator') head.append(simTag());
    const li = el('li', {}, head);
    li.dataset.seq = String(seq);
    if ((e.risk_flags || []).length) {
      li.append(el('div', {}, ...e.risk_flags.map((r) => el('span', { className: 'flag', textContent: r }))));
    }
    if ((e.reasons || []).length) li.append(el('ul', {}, ...e.reasons.map((r) => el('li', { textContent: r }))));
    return li;
  }

  function renderFeed() {
    const f = filters();
    const items = st.events.filter(({ e }) => eventShown(e, f)).map(({ seq, e }) => eventItem(seq, e));
    $('feed').replaceChildren(...items);
  }

  // ---- one pair: its sparklines ----

  async function showPair(k) {
    st.selected = k;
    const i = k.indexOf(':');
    const chain = k.slice(0, i), address = k.slice(i + 1);
    let body;
    try {
      const r = await fetch('/v1/pairs/' + encodeURIComponent(chain) + '/' + encodeURIComponent(address) + token());
      if (!r.ok) { $('detail').hidden = false; $('detail-title').textContent = k + ': not tracked'; return; }
      body = await r.json();
    } catch (_) { return; }
    if (st.selected !== k) return;
    const p = body.pair;
    $('detail').hidden = false;
    $('detail-title').replaceChildren(p.chain + ' ', pairNameOf(p.base_token.symbol, p.quote_token.symbol), ' on ' + (p.dex_id || '?'));
    if (p.source === 'simulator') $('detail-title').append(simTag());
    $('detail-meta').textContent = 'price ' + price(p.price_usd) + ' · liquidity ' + usd(p.liquidity_usd) + ' · stance ' + (p.stance || '–') + ' · ' + body.history.length + ' points';
    for (const c of st.charts) c.destroy();
    st.charts = [];
    const t = body.history.map((h) => h.t / 1000);
    const width = Math.max(240, $('side').clientWidth - 16);
    const chart = (target, label, ys, color) => {
      const opts = { width, height: 120, legend: { show: false }, scales: { x: { time: true } }, axes: [{ stroke: '#8a939c' }, { stroke: '#8a939c', size: 60 }],
        series: [{}, { label, stroke: color, width: 1.5 }] };
      st.charts.push(new uPlot(opts, [t, ys], $(target)));
    };
    chart('spark-price', 'price', body.history.map((h) => h.price_usd), '#7cb7ff');
    chart('spark-volume', '5m volume', body.history.map((h) => h.volume_m5_usd), '#2fbf71');
    renderPairs();
  }

  function route() {
    const m = location.hash.match(/^#pair=(.+)$/);
    if (!m) return;
    // A fragment anyone can type or link: one that does not decode, or names no pair, is
    // ignored.
    let k;
    try { k = decodeURIComponent(m[1]); } catch (_) { return; }
    if (k.indexOf(':') > 0) showPair(k);
  }
  window.addEventListener('hashchange', route);
  setInterval(() => { if (st.selected) showPair(st.selected); }, 15000);

  // ---- controls ----

  for (const id of ['f-chain', 'f-kind', 'f-direction', 'f-score']) {
    $(id).addEventListener('input', () => { renderPairs(); renderFeed(); });
  }
  $('key').addEventListener('change', () => {
    localStorage.setItem('dexpulse.key', $('key').value.trim());
    st.epoch = null; st.seq = 0; st.connections = 0;
    const old = st.ws;
    st.ws = null;
    if (old) old.close();
    connect();
  });
  $('controls').addEventListener('submit', (e) => e.preventDefault());

  setInterval(() => { if (st.dirty) renderPairs(); }, 500);
  st.render = renderPairs;
  counters();
  connect();
  route();
})();
