// A small force-directed graph for the memory browser: SVG, no library. At most a few
// hundred nodes are drawn (the daemon caps a neighbourhood at 300), so every pair of
// nodes repels directly (O(n²) per tick, ~45,000 pairs) instead of through a quadtree.
// The forces follow d3-force's defaults in spirit: springs along relations, repulsion
// between nodes, a pull towards the centre, velocities decaying, and a "temperature"
// (alpha) that cools to rest within about 300 ticks.
//
// Names and types are user data: they reach the DOM only as text nodes and attribute
// values, never as markup.
'use strict';

(() => {
  const SVG = 'http://www.w3.org/2000/svg';
  const LINK_DISTANCE = 90;
  const CHARGE = -260;
  const CENTRE_PULL = 0.04;
  const VELOCITY_DECAY = 0.6;
  const ALPHA_MIN = 0.001;
  const ALPHA_DECAY = 1 - Math.pow(ALPHA_MIN, 1 / 300);
  const TICKS_PER_FRAME = 3;
  const LABEL_MAX = 28;

  function svg(tag, attrs) {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    return e;
  }

  // A stable colour per entity type.
  function hue(type) {
    let h = 0;
    for (let i = 0; i < type.length; i++) h = (h * 31 + type.charCodeAt(i)) >>> 0;
    return h % 360;
  }

  function label(name) {
    return name.length > LABEL_MAX ? name.slice(0, LABEL_MAX - 1) + '…' : name;
  }

  class ForceGraph {
    // `host`: the element to draw in; `onOpen(name)`: a node was clicked.
    constructor(host, onOpen) {
      this.onOpen = onOpen;
      this.width = 640;
      this.height = 420;
      this.svg = svg('svg', { class: 'graph', viewBox: `${-this.width / 2} ${-this.height / 2} ${this.width} ${this.height}`, role: 'img' });
      this.viewport = svg('g', { class: 'viewport' });
      this.edgeLayer = svg('g', { class: 'edges' });
      this.nodeLayer = svg('g', { class: 'nodes' });
      this.viewport.append(this.edgeLayer, this.nodeLayer);
      this.svg.append(this.viewport);
      host.append(this.svg);
      this.nodes = new Map();
      this.edges = [];
      this.alpha = 0;
      this.running = false;
      this.view = { k: 1, x: 0, y: 0 };
      this.autoFit = true;
      this.centre = null;
      this.listen();
    }

    // Shows `data` ({nodes: [{name, entityType, depth}], edges: [{from, to, relationType}]})
    // around `centre`. Nodes already drawn keep their places, so a live update does not
    // shake the picture; new ones start next to a neighbour.
    setData(data, centre) {
      const sameCentre = centre === this.centre;
      this.centre = centre;
      if (!sameCentre) this.autoFit = true;
      const next = new Map();
      data.nodes.forEach((n, i) => {
        let node = this.nodes.get(n.name);
        if (!node || !sameCentre) {
          const r = 12 * Math.sqrt(0.5 + i);
          const a = i * Math.PI * (3 - Math.sqrt(5));
          node = { name: n.name, x: r * Math.cos(a), y: r * Math.sin(a), vx: 0, vy: 0, fresh: true };
        }
        node.type = n.entityType;
        node.depth = n.depth;
        next.set(n.name, node);
      });
      const edges = [];
      for (const e of data.edges) {
        const source = next.get(e.from);
        const target = next.get(e.to);
        if (source && target) edges.push({ source, target, type: e.relationType });
      }
      // A new node on a live update starts beside a node it is related to.
      for (const e of edges) {
        for (const [a, b] of [[e.source, e.target], [e.target, e.source]]) {
          if (a.fresh && !b.fresh && sameCentre) {
            a.x = b.x + (Math.random() - 0.5) * 20;
            a.y = b.y + (Math.random() - 0.5) * 20;
          }
        }
      }
      for (const node of next.values()) {
        node.fresh = false;
        node.degree = 0;
        if (node.name === centre) { node.fx = 0; node.fy = 0; } else if (!node.dragged) { node.fx = null; node.fy = null; }
      }
      for (const e of edges) { e.source.degree++; e.target.degree++; }
      this.nodes = next;
      this.edges = edges;
      this.draw();
      this.reheat(sameCentre ? 0.3 : 1);
    }

    // Rebuilds the SVG elements (a few hundred at most).
    draw() {
      this.edgeLayer.replaceChildren();
      this.nodeLayer.replaceChildren();
      for (const e of this.edges) {
        e.line = svg('line', { class: 'edge' });
        const title = svg('title');
        title.textContent = `${e.source.name} ${e.type} ${e.target.name}`;
        e.line.append(title);
        this.edgeLayer.append(e.line);
      }
      for (const node of this.nodes.values()) {
        const g = svg('g', { class: 'node' + (node.name === this.centre ? ' centre' : '') + (node.type == null ? ' missing' : '') });
        g.setAttribute('data-name', node.name);
        g.setAttribute('tabindex', '0');
        const radius = node.name === this.centre ? 10 : node.depth === 1 ? 7 : 5;
        const circle = svg('circle', { r: radius });
        if (node.type != null) circle.style.fill = `hsl(${hue(node.type)} 62% 58%)`;
        const text = svg('text', { x: radius + 4, y: 4 });
        text.textContent = label(node.name);
        const title = svg('title');
        title.textContent = node.type == null ? `${node.name} (no such entity)` : `${node.name} (${node.type})`;
        g.append(title, circle, text);
        g.addEventListener('pointerdown', (ev) => this.grab(ev, node));
        g.addEventListener('keydown', (ev) => { if (ev.key === 'Enter' && node.type != null) this.onOpen(node.name); });
        node.el = g;
        this.nodeLayer.append(g);
      }
      this.render();
    }

    // Runs the layout until it comes to rest; `data-settled` on the SVG says when it has
    // (the browser test clicks nodes only then).
    reheat(alpha) {
      this.alpha = Math.max(this.alpha, alpha);
      this.svg.dataset.settled = 'false';
      if (this.running) return;
      this.running = true;
      const frame = () => {
        for (let i = 0; i < TICKS_PER_FRAME && this.alpha >= ALPHA_MIN; i++) this.tick();
        this.render();
        if (this.alpha >= ALPHA_MIN) {
          requestAnimationFrame(frame);
        } else {
          this.running = false;
          this.svg.dataset.settled = 'true';
        }
      };
      requestAnimationFrame(frame);
    }

    tick() {
      const alpha = this.alpha;
      const nodes = Array.from(this.nodes.values());
      for (const e of this.edges) {
        const s = e.source, t = e.target;
        let dx = t.x + t.vx - s.x - s.vx, dy = t.y + t.vy - s.y - s.vy;
        const d = Math.sqrt(dx * dx + dy * dy) || 1;
        const strength = 1 / Math.max(1, Math.min(s.degree, t.degree));
        const l = ((d - LINK_DISTANCE) / d) * alpha * strength;
        dx *= l; dy *= l;
        const bias = s.degree / (s.degree + t.degree || 1);
        t.vx -= dx * bias; t.vy -= dy * bias;
        s.vx += dx * (1 - bias); s.vy += dy * (1 - bias);
      }
      for (let i = 0; i < nodes.length; i++) {
        const a = nodes[i];
        for (let j = i + 1; j < nodes.length; j++) {
          const b = nodes[j];
          let dx = b.x - a.x, dy = b.y - a.y;
          let d2 = dx * dx + dy * dy;
          if (d2 < 1) { dx = Math.random() - 0.5; dy = Math.random() - 0.5; d2 = 1; }
          const w = (CHARGE * alpha) / d2;
          a.vx += dx * w; a.vy += dy * w;
          b.vx -= dx * w; b.vy -= dy * w;
        }
      }
      for (const n of nodes) {
        n.vx -= n.x * CENTRE_PULL * alpha;
        n.vy -= n.y * CENTRE_PULL * alpha;
        if (n.fx != null) { n.x = n.fx; n.vx = 0; } else { n.x += (n.vx *= VELOCITY_DECAY); }
        if (n.fy != null) { n.y = n.fy; n.vy = 0; } else { n.y += (n.vy *= VELOCITY_DECAY); }
      }
      this.alpha += (0 - this.alpha) * ALPHA_DECAY;
    }

    render() {
      for (const e of this.edges) {
        e.line.setAttribute('x1', e.source.x.toFixed(1));
        e.line.setAttribute('y1', e.source.y.toFixed(1));
        e.line.setAttribute('x2', e.target.x.toFixed(1));
        e.line.setAttribute('y2', e.target.y.toFixed(1));
      }
      for (const n of this.nodes.values()) n.el.setAttribute('transform', `translate(${n.x.toFixed(1)},${n.y.toFixed(1)})`);
      if (this.autoFit) this.fit();
      this.viewport.setAttribute('transform', `translate(${this.view.x},${this.view.y}) scale(${this.view.k})`);
    }

    // Scales and centres the picture to fit, until the user pans or zooms.
    fit() {
      let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
      for (const n of this.nodes.values()) {
        x0 = Math.min(x0, n.x); y0 = Math.min(y0, n.y); x1 = Math.max(x1, n.x + 90); y1 = Math.max(y1, n.y);
      }
      if (!Number.isFinite(x0)) return;
      const k = Math.min(1.15, (this.width - 40) / Math.max(1, x1 - x0), (this.height - 40) / Math.max(1, y1 - y0));
      this.view = { k, x: -((x0 + x1) / 2) * k, y: -((y0 + y1) / 2) * k };
    }

    toGraph(ev) {
      const m = this.viewport.getScreenCTM();
      if (!m) return { x: 0, y: 0 };
      const p = new DOMPoint(ev.clientX, ev.clientY).matrixTransform(m.inverse());
      return { x: p.x, y: p.y };
    }

    // Dragging a node moves it; a press without a move opens it.
    grab(ev, node) {
      ev.stopPropagation();
      const start = { x: ev.clientX, y: ev.clientY };
      let moved = false;
      node.el.setPointerCapture(ev.pointerId);
      const move = (e) => {
        if (!moved && Math.hypot(e.clientX - start.x, e.clientY - start.y) < 4) return;
        moved = true;
        this.autoFit = false;
        const p = this.toGraph(e);
        node.fx = p.x; node.fy = p.y; node.dragged = true;
        this.reheat(0.2);
      };
      const up = () => {
        node.el.removeEventListener('pointermove', move);
        node.el.removeEventListener('pointerup', up);
        node.el.removeEventListener('pointercancel', up);
        if (!moved) {
          if (node.type != null) this.onOpen(node.name);
        } else if (node.name !== this.centre) {
          node.fx = null; node.fy = null; node.dragged = false;
        }
      };
      node.el.addEventListener('pointermove', move);
      node.el.addEventListener('pointerup', up);
      node.el.addEventListener('pointercancel', up);
    }

    // Panning (drag the background) and zooming (wheel).
    listen() {
      this.svg.addEventListener('pointerdown', (ev) => {
        const start = { x: ev.clientX, y: ev.clientY, vx: this.view.x, vy: this.view.y };
        const scale = this.width / this.svg.getBoundingClientRect().width;
        this.svg.setPointerCapture(ev.pointerId);
        const move = (e) => {
          this.autoFit = false;
          this.view.x = start.vx + (e.clientX - start.x) * scale;
          this.view.y = start.vy + (e.clientY - start.y) * scale;
          this.render();
        };
        const up = () => {
          this.svg.removeEventListener('pointermove', move);
          this.svg.removeEventListener('pointerup', up);
        };
        this.svg.addEventListener('pointermove', move);
        this.svg.addEventListener('pointerup', up);
      });
      this.svg.addEventListener('wheel', (ev) => {
        ev.preventDefault();
        this.autoFit = false;
        const rect = this.svg.getBoundingClientRect();
        const scale = this.width / rect.width;
        const px = (ev.clientX - rect.left) * scale - this.width / 2;
        const py = (ev.clientY - rect.top) * scale - this.height / 2;
        const factor = Math.exp(-ev.deltaY * 0.0015);
        const k = Math.min(8, Math.max(0.1, this.view.k * factor));
        const f = k / this.view.k;
        this.view = { k, x: px - (px - this.view.x) * f, y: py - (py - this.view.y) * f };
        this.render();
      }, { passive: false });
    }
  }

  window.ForceGraph = ForceGraph;
})();
