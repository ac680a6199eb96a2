// The front end of qviz.widgets.figure.FigureView: a plotly figure drawn with Plotly.react.
//
// plotly.js (about 5 MB) is fetched from the kernel once per page, on demand, by the first view
// that needs it, and shared by every view: a widget's own state holds only its figure's JSON.
// (plotly's FigureWidget puts its 5 MB bundle into every widget's state; anywidget gives a
// widget 2 s to load it, and a widget that misses that ignores every later update.)

function plotly(model) {
  if (!window.__qvizPlotly) {
    window.__qvizPlotly = new Promise((resolve, reject) => {
      const onMessage = (msg, buffers) => {
        if (!msg || msg.kind !== "plotly.js") return;
        model.off("msg:custom", onMessage);
        try {
          const module = { exports: {} };  // plotly.js is UMD: take its CommonJS branch
          new Function("module", new TextDecoder().decode(buffers[0]))(module);
          resolve(module.exports);
        } catch (err) {
          window.__qvizPlotly = null;  // a later view asks again
          reject(err);
        }
      };
      model.on("msg:custom", onMessage);
      model.send({ kind: "plotly.js?" });
    });
  }
  return window.__qvizPlotly;
}

function spec(model) {
  const text = model.get("_spec");
  if (!text) return { data: [], layout: {} };
  const fig = JSON.parse(text);
  const layout = fig.layout || {};
  layout.template = JSON.parse(model.get("_template") || "{}");
  return { data: fig.data || [], layout };
}

const CONFIG = { displaylogo: false, responsive: true };

async function render({ model, el }) {
  const div = document.createElement("div");
  div.className = "qviz-plot";
  el.appendChild(div);
  const Plotly = await plotly(model);
  const draw = () => {
    const fig = spec(model);
    return Plotly.react(div, fig.data, fig.layout, CONFIG);
  };
  await draw();
  model.on("change:_spec", draw);
  div.on("plotly_click", (event) => {
    const p = event.points[0];
    if (!p) return;
    model.send({ kind: "click", trace: p.curveNumber, index: p.pointIndex ?? p.pointNumber,
                 x: p.x, y: p.y });
  });
  // a view drawn before the page laid it out gets plotly's default size: fit it once it has one
  const resize = new ResizeObserver(() => {
    if (div.offsetWidth > 0) Plotly.Plots.resize(div);
  });
  resize.observe(el);
  return () => {
    resize.disconnect();
    model.off("change:_spec", draw);
    Plotly.purge(div);
  };
}

export default { render };
