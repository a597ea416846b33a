// The memory browser: a read-only view of the daemon's knowledge graphs.
//
// Views, chosen by the URL's fragment:
//   #/                      the projects this daemon has served (global memory first)
//   #/p?project=DIR&q=..&after=..|before=..|at=last&e=NAME&hops=1|2
//                           one project (no `project`: the global memory): its entity
//                           list or search results, and the entity `e` with its graph
//
// Every text that comes from the memory (names, types, observations, paths) is put into
// the page with `append`/`textContent`, which make text nodes: it is never parsed as
// HTML, so an entity named `<img src=x onerror=alert(1)>` shows as those characters.
// The server's Content-Security-Policy (`default-src 'self'`) forbids inline script as
// a second line of defence.
'use strict';

(() => {
  // ---------------------------------------------------------------- small helpers

  // An element with attributes, listeners (`on...`) and children (strings become text).
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v == null || v === false) continue;
      if (k === 'class') e.className = v;
      else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v === true ? '' : String(v));
    }
    for (const c of children.flat()) if (c != null && c !== false) e.append(c instanceof Node ? c : String(c));
    return e;
  }

  const fmt = new Intl.NumberFormat('en');
  const number = (n) => fmt.format(n);

  function ago(ms) {
    if (ms == null) return 'never';
    const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
    if (s < 5) return 'just now';
    if (s < 60) return `${s} s ago`;
    if (s < 3600) return `${Math.floor(s / 60)} min ago`;
    if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
    return `${Math.floor(s / 86400)} d ago`;
  }

  function when(ms) {
    return el('time', { datetime: ms == null ? null : new Date(ms).toISOString(), title: ms == null ? null : new Date(ms).toLocaleString(), 'data-ms': ms }, ago(ms));
  }

  // What the test run reads back: when the first list and the first summary were on
  // screen (ms since navigation), and how long each search keystroke took to answer
  // (from the input event to the rendered list).
  const timings = (window.__memoryUi = { firstList: null, firstSummary: null, keystrokes: [] });

  // ---------------------------------------------------------------- the daemon's API

  class ApiError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  async function api(path, params, signal) {
    const url = new URL(path, location.origin);
    for (const [k, v] of Object.entries(params || {})) if (v != null && v !== '') url.searchParams.set(k, String(v));
    const r = await fetch(url, { signal, headers: { Accept: 'application/json' }, credentials: 'same-origin' });
    if (r.status === 401) {
      askForToken();
      throw new ApiError(401, 'this daemon needs its token');
    }
    const body = await r.json().catch(() => ({}));
    if (!r.ok) throw new ApiError(r.status, body.error || `${r.status} ${r.statusText}`);
    return body;
  }

  // ---------------------------------------------------------------- the token prompt

  const login = document.getElementById('login');
  const loginForm = document.getElementById('login-form');
  const loginError = document.getElementById('login-error');

  function askForToken() {
    if (!login.hidden) return;
    login.hidden = false;
    loginError.textContent = '';
    document.getElementById('token').focus();
  }

  loginForm.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const input = document.getElementById('token');
    const r = await fetch('/ui/login', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ token: input.value }),
      credentials: 'same-origin',
    });
    if (r.ok) {
      input.value = '';
      login.hidden = true;
      route(true);
    } else {
      loginError.textContent = r.status === 401 ? 'That is not the token.' : `Could not log in (${r.status}).`;
      input.select();
    }
  });

  // ---------------------------------------------------------------- live updates

  const liveDot = document.getElementById('live');
  let source = null;

  // Listens to `url`; `onChange` runs (throttled by the caller) after every change.
  function liveUpdates(url, onChange) {
    if (source) source.close();
    document.body.dataset.live = 'off';
    liveDot.classList.remove('on');
    source = new EventSource(url);
    source.addEventListener('ready', () => {
      document.body.dataset.live = 'on';
      liveDot.classList.add('on');
      liveDot.title = 'Live updates: connected';
    });
    source.addEventListener('change', () => onChange());
    source.addEventListener('error', () => {
      document.body.dataset.live = 'off';
      liveDot.classList.remove('on');
      liveDot.title = 'Live updates: reconnecting';
    });
  }

  // Runs `work` now, or once more after the run in progress: changes that arrive while
  // the page is refreshing are covered by one more refresh, never by a queue of them.
  function throttled(work) {
    let running = false, again = false;
    const run = async () => {
      if (running) { again = true; return; }
      running = true;
      try { await work(); } catch (e) { if (!(e instanceof ApiError && e.status === 401)) console.warn(e); }
      running = false;
      if (again) { again = false; run(); }
    };
    return run;
  }

  // ---------------------------------------------------------------- routing

  const main = document.getElementById('main');
  const crumbs = document.getElementById('crumbs');
  let view = null; // the view on screen: { kind, key, update(state) }

  function parse() {
    const hash = location.hash.replace(/^#/, '') || '/';
    const [path, query] = hash.split('?', 2);
    const p = new URLSearchParams(query || '');
    if (path !== '/p') return { kind: 'projects' };
    return {
      kind: 'project',
      project: p.get('project') || null,
      q: p.get('q') || '',
      after: p.get('after'),
      before: p.get('before'),
      at: p.get('at'),
      entity: p.get('e'),
      hops: p.get('hops') === '2' ? 2 : 1,
    };
  }

  // The fragment for a project page's state.
  function link(state) {
    const p = new URLSearchParams();
    if (state.project) p.set('project', state.project);
    if (state.q) p.set('q', state.q);
    if (state.after != null) p.set('after', state.after);
    if (state.before != null) p.set('before', state.before);
    if (state.at) p.set('at', state.at);
    if (state.entity != null) p.set('e', state.entity);
    if (state.hops === 2) p.set('hops', '2');
    return '#/p?' + p.toString();
  }

  function route(force) {
    const state = parse();
    const key = state.kind === 'projects' ? 'projects' : 'project:' + (state.project || '');
    if (force || !view || view.key !== key) {
      view = state.kind === 'projects' ? projectsView() : projectView(state);
      view.key = key;
    }
    view.update(state);
  }

  window.addEventListener('hashchange', () => route(false));

  // ---------------------------------------------------------------- the projects

  function projectsView() {
    crumbs.replaceChildren();
    const tbody = el('tbody');
    const status = el('p', { class: 'muted' }, 'Loading…');
    main.replaceChildren(
      el('section', { class: 'projects' },
        el('h1', {}, 'Projects'),
        el('p', { class: 'muted' }, 'The global memory and every project this daemon has served. Counts and times update as agents write.'),
        el('table', { class: 'list', id: 'projects' },
          el('thead', {}, el('tr', {}, el('th', {}, 'Project'), el('th', { class: 'num' }, 'Entities'), el('th', { class: 'num' }, 'Relations'), el('th', { class: 'num' }, 'Observations'), el('th', {}, 'Last write'))),
          tbody),
        status));

    const refresh = throttled(async () => {
      const { projects } = await api('/ui/api/projects');
      tbody.replaceChildren(...projects.map((p) => {
        const href = link({ project: p.project });
        return el('tr', { 'data-project': p.project ?? '' },
          el('td', {},
            el('a', { href, class: 'strong' }, p.name),
            el('div', { class: 'path' }, p.global ? p.db : p.project),
            p.exists ? null : el('div', { class: 'muted' }, 'no database yet'),
            p.problem ? el('div', { class: 'error' }, p.problem) : null),
          el('td', { class: 'num' }, number(p.counts.entities)),
          el('td', { class: 'num' }, number(p.counts.relations)),
          el('td', { class: 'num' }, number(p.counts.observations)),
          el('td', {}, when(p.lastWrite)));
      }));
      status.textContent = '';
      main.dataset.state = 'ready';
    });
    liveUpdates('/ui/api/projects/events', refresh);
    return { update: () => refresh() };
  }

  // ---------------------------------------------------------------- one project

  function projectView(initial) {
    const project = initial.project;
    let state = { ...initial };
    const base = { project };

    crumbs.replaceChildren(el('span', { class: 'sep' }, '/'), el('a', { href: link(base), id: 'crumb-project' }, project ? project.split('/').filter(Boolean).pop() || project : 'Global memory'));

    const summary = el('div', { class: 'summary', id: 'summary' });
    const search = el('input', { id: 'search', type: 'search', placeholder: 'Search names, types and observations', autocomplete: 'off', spellcheck: 'false', 'aria-label': 'Search' });
    search.value = state.q;
    const listStatus = el('p', { class: 'muted', id: 'list-status' });
    const rows = el('tbody');
    const table = el('table', { class: 'list', id: 'entities' },
      el('thead', {}, el('tr', {}, el('th', {}, 'Name'), el('th', {}, 'Type'), el('th', { class: 'num', title: 'Observations' }, 'Obs.'))), rows);
    const pager = el('nav', { class: 'pager', 'aria-label': 'Pages' });
    const detail = el('section', { class: 'detail', id: 'detail' }, el('p', { class: 'muted' }, 'Pick an entity to see its observations, relations and neighbourhood.'));

    main.replaceChildren(
      el('section', { class: 'project' },
        el('h1', {}, project ? project.split('/').filter(Boolean).pop() || project : 'Global memory'),
        summary,
        el('div', { class: 'columns' },
          el('section', { class: 'entities' }, search, listStatus, table, pager),
          detail)));

    // ---- the summary line
    const refreshSummary = async () => {
      const p = await api('/ui/api/project', { project });
      summary.replaceChildren(
        el('span', { class: 'path' }, project || p.db),
        el('span', {}, `${number(p.counts.entities)} entities`),
        el('span', {}, `${number(p.counts.relations)} relations`),
        el('span', {}, `${number(p.counts.observations)} observations`),
        el('span', {}, 'last write ', when(p.lastWrite)));
      if (timings.firstSummary == null) timings.firstSummary = performance.now();
    };

    // ---- the list: one request at a time per query; an older answer never overwrites
    let listAbort = null;
    let offset = null; // where the page on screen starts, when known
    const refreshList = async (typedAt) => {
      if (listAbort) listAbort.abort();
      const abort = (listAbort = new AbortController());
      const q = state.q;
      const params = { project, q, after: state.after, before: state.before, at: state.at };
      let page;
      try {
        page = await api('/ui/api/entities', params, abort.signal);
      } catch (e) {
        if (e.name === 'AbortError') return;
        if (e.status === 404) {
          rows.replaceChildren();
          listStatus.textContent = e.message;
          table.dataset.state = 'ready';
          return;
        }
        throw e;
      }
      if (abort.signal.aborted) return;
      offset = placeOf(page, q);
      shownPage = { key: placeKey(q), offset, first: page.items[0]?.cursor, last: page.items[page.items.length - 1]?.cursor, length: page.items.length };
      rows.replaceChildren(...page.items.map((item) => el('tr', { 'data-name': item.name, class: item.name === state.entity ? 'selected' : null },
        el('td', {}, el('a', { href: link({ ...state, entity: item.name }) }, item.name)),
        el('td', {}, el('span', { class: 'type' }, item.entityType)),
        el('td', { class: 'num' }, number(item.observations)))));
      listStatus.textContent = describe(page, q);
      pager.replaceChildren(
        pageLink('First', page.hasBefore, { at: null, after: null, before: null }),
        pageLink('Previous', page.hasBefore && page.items.length > 0, { before: page.items[0]?.cursor, after: null, at: null }),
        pageLink('Next', page.hasAfter && page.items.length > 0, { after: page.items[page.items.length - 1]?.cursor, before: null, at: null }),
        pageLink('Last', page.hasAfter, { at: 'last', after: null, before: null }));
      table.dataset.q = q;
      table.dataset.state = 'ready';
      if (timings.firstList == null) timings.firstList = performance.now();
      if (typedAt != null) timings.keystrokes.push({ q, ms: performance.now() - typedAt, total: page.total, atLeast: page.atLeast });
    };

    // Where a page starts in the whole list: the server says when it knows; a search's
    // page found by walking from a cursor is placed after (or before) the page on screen
    // it was reached from.
    let shownPage = null;
    const placeKey = (q) => JSON.stringify([q, state.after, state.before, state.at]);
    function placeOf(page, q) {
      if (page.offset != null) return page.offset;
      if (state.after == null && state.before == null && state.at == null) return 0;
      if (!shownPage || shownPage.offset == null) return null;
      if (shownPage.key === placeKey(q)) return shownPage.offset; // the same page, refreshed
      if (state.after != null && String(shownPage.last) === String(state.after)) return shownPage.offset + shownPage.length;
      if (state.before != null && String(shownPage.first) === String(state.before)) {
        return shownPage.offset >= page.items.length ? shownPage.offset - page.items.length : null;
      }
      return null;
    }

    function describe(page, q) {
      const what = q ? 'matches' : 'entities';
      if (page.items.length === 0) return q ? 'No entity matches.' : 'No entities yet.';
      if (offset == null) return `${number(page.items.length)} ${what} shown; there are more`;
      const from = `${number(offset + 1)}–${number(offset + page.items.length)} of `;
      if (page.total != null) return `${from}${number(page.total)} ${what}`;
      // Not counted: a walk forwards says how many it saw from this page on.
      const forwards = state.before == null && state.at !== 'last';
      if (forwards) return `${from}more than ${number(offset + page.atLeast - 1)} ${what}`;
      return `${number(offset + 1)}–${number(offset + page.items.length)} of the ${what}${page.hasAfter ? ' (more follow)' : ''}`;
    }

    function pageLink(label, enabled, change) {
      if (!enabled) return el('span', { class: 'disabled' }, label);
      return el('a', { href: link({ ...state, ...change }), 'data-page': label.toLowerCase() }, label);
    }

    // ---- the entity and its graph
    let graph = null;
    // `keep`: a live refresh of the entity on screen, whose graph keeps its drawing.
    const refreshEntity = async (keep) => {
      if (state.entity == null) return;
      const name = state.entity;
      let e;
      try {
        e = await api('/ui/api/entity', { project, name });
      } catch (err) {
        if (err.status !== 404) throw err;
        detail.replaceChildren(el('h2', {}, name), el('p', { class: 'muted' }, 'No entity of this name (it may have been deleted).'));
        graph = null;
        return;
      }
      if (state.entity !== name) return;
      // Outgoing: "works_at → Acme"; incoming: "Ada works_at →" (this entity).
      const other = (l) => l.exists
        ? el('a', { href: link({ ...state, entity: l.other }), class: 'entity-link' }, l.other)
        : el('span', { class: 'missing', title: 'no entity of this name' }, l.other);
      const relation = (l, outgoing) => outgoing
        ? el('li', {}, el('span', { class: 'rel' }, l.relationType), ' → ', other(l))
        : el('li', {}, other(l), ' ', el('span', { class: 'rel' }, l.relationType), ' →');
      const more = (shown, total) => total > shown ? el('li', { class: 'muted' }, `and ${number(total - shown)} more`) : null;
      const hopsButton = (n) => el('a', { href: link({ ...state, hops: n }), class: state.hops === n ? 'on' : null, 'data-hops': n }, n === 1 ? '1 hop' : '2 hops');
      const graphHost = el('div', { class: 'graph-host', id: 'graph' });
      detail.replaceChildren(
        el('h2', { id: 'entity-name' }, e.name),
        el('p', {}, el('span', { class: 'type' }, e.entityType)),
        el('h3', {}, `Observations (${number(e.observationsTotal)})`),
        e.observations.length ? el('ol', { id: 'observations' }, e.observations.map((o) => el('li', {}, o))) : el('p', { class: 'muted' }, 'None.'),
        e.observationsTotal > e.observations.length ? el('p', { class: 'muted' }, `and ${number(e.observationsTotal - e.observations.length)} more`) : null,
        el('div', { class: 'relations' },
          el('div', {}, el('h3', {}, `Outgoing (${number(e.outgoingTotal)})`), el('ul', { id: 'outgoing' }, e.outgoing.map((l) => relation(l, true)), more(e.outgoing.length, e.outgoingTotal))),
          el('div', {}, el('h3', {}, `Incoming (${number(e.incomingTotal)})`), el('ul', { id: 'incoming' }, e.incoming.map((l) => relation(l, false)), more(e.incoming.length, e.incomingTotal)))),
        el('div', { class: 'graph-head' }, el('h3', {}, 'Neighbourhood'), el('span', { class: 'hops' }, hopsButton(1), hopsButton(2)), el('span', { class: 'muted', id: 'graph-note' })),
        graphHost);
      if (keep && graph) graphHost.append(graph.svg);
      else graph = new window.ForceGraph(graphHost, (name) => { location.hash = link({ ...state, entity: name }); });
      await refreshGraph();
    };

    const refreshGraph = async () => {
      if (!graph || state.entity == null) return;
      const name = state.entity;
      const g = await api('/ui/api/graph', { project, name, hops: state.hops });
      if (state.entity !== name) return;
      graph.setData(g, name);
      const note = document.getElementById('graph-note');
      const total = g.totalExact ? number(g.total) : `at least ${number(g.total)}`;
      note.textContent = g.total > g.nodes.length
        ? `showing ${number(g.nodes.length)} of ${total} nodes within ${state.hops} hop${state.hops === 2 ? 's' : ''} (at most ${number(g.limit)} are drawn)`
        : `${number(g.nodes.length)} node${g.nodes.length === 1 ? '' : 's'}`;
      note.dataset.drawn = g.nodes.length;
      note.dataset.total = g.total;
      document.getElementById('graph').dataset.state = 'ready';
    };

    // ---- typing: results as you type (no delay); the URL follows without new history
    search.addEventListener('input', () => {
      const typedAt = performance.now();
      state = { ...state, q: search.value, after: null, before: null, at: null };
      history.replaceState(null, '', link(state));
      refreshList(typedAt).catch(report);
    });

    // ---- a change anywhere in this project's memory: refresh what is on screen, in place
    const refreshAll = throttled(async () => {
      await Promise.all([refreshSummary(), refreshList(), state.entity != null && graph ? refreshEntityInPlace() : null]);
      document.body.dataset.refreshed = String(Number(document.body.dataset.refreshed || 0) + 1);
    });

    // The entity's page redrawn in place: the graph keeps its nodes where they are.
    const refreshEntityInPlace = async () => {
      const scrollY = window.scrollY;
      await refreshEntity(true);
      window.scrollTo(0, scrollY);
    };

    liveUpdates('/ui/api/events?' + new URLSearchParams(project ? { project } : {}).toString(), refreshAll);

    function report(e) {
      if (e instanceof ApiError && e.status === 401) return;
      console.warn(e);
      listStatus.textContent = String(e.message || e);
    }

    let shown = null;
    return {
      update(next) {
        const listChanged = !shown || next.q !== shown.q || next.after !== shown.after || next.before !== shown.before || next.at !== shown.at;
        const entityChanged = !shown || next.entity !== shown.entity;
        const hopsChanged = shown && next.hops !== shown.hops;
        state = next;
        if (search.value !== state.q) search.value = state.q;
        if (!shown) refreshSummary().catch(report);
        if (listChanged) refreshList().catch(report);
        else for (const tr of rows.children) tr.classList.toggle('selected', tr.dataset.name === state.entity);
        if (entityChanged) {
          graph = null;
          if (state.entity == null) detail.replaceChildren(el('p', { class: 'muted' }, 'Pick an entity to see its observations, relations and neighbourhood.'));
          else refreshEntity().catch(report);
        } else if (hopsChanged) {
          for (const a of detail.querySelectorAll('.hops a')) a.classList.toggle('on', Number(a.dataset.hops) === state.hops);
          for (const a of detail.querySelectorAll('.hops a')) a.href = link({ ...state, hops: Number(a.dataset.hops) });
          refreshGraph().catch(report);
        }
        shown = { ...state };
      },
    };
  }

  // The relative times ("3 min ago") move on by themselves.
  setInterval(() => {
    for (const t of document.querySelectorAll('time[data-ms]')) t.textContent = ago(Number(t.dataset.ms));
  }, 10000);

  route(true);
})();
