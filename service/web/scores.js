// Held-out figures for the demo page: per predicted step, the MSE against the true frame
// and as a multiple of copying the last input frame, computed here from the PNGs on
// screen; beside them the committed model's figures on the sample's whole set, from
// samples.json (written from the model card by examples/make_samples.py).
// Plain JavaScript, no build step; app.js calls `HeldOutScores`.
"use strict";

const HeldOutScores = (() => {
  /**
   * A frame's pixels as {width, height, rgb: Float64Array in [0, 1]}. Decoded without
   * colour-space conversion, so that the values are the PNG's own bytes, as the API's
   * and a Python reader's.
   */
  async function decodeFrame(src) {
    const response = await fetch(src);
    if (!response.ok) throw new Error(`could not load ${src} (HTTP ${response.status})`);
    const bitmap = await createImageBitmap(await response.blob(), {
      colorSpaceConversion: "none",
      premultiplyAlpha: "none",
    });
    const { width, height } = bitmap;
    const canvas = document.createElement("canvas");
    canvas.width = width;
    canvas.height = height;
    const context = canvas.getContext("2d", { willReadFrequently: true });
    context.drawImage(bitmap, 0, 0);
    bitmap.close();
    const rgba = context.getImageData(0, 0, width, height).data;
    const rgb = new Float64Array(width * height * 3);
    for (let p = 0, q = 0; p < rgba.length; p += 4, q += 3) {
      rgb[q] = rgba[p] / 255;
      rgb[q + 1] = rgba[p + 1] / 255;
      rgb[q + 2] = rgba[p + 2] / 255;
    }
    return { width, height, rgb };
  }

  function mse(a, b) {
    let sum = 0;
    for (let i = 0; i < a.rgb.length; i++) {
      const d = a.rgb[i] - b.rgb[i];
      sum += d * d;
    }
    return sum / a.rgb.length;
  }

  // SSIM as the model cards compute it (scikit-image's structural_similarity with
  // data_range 1 and channel_axis): a 7x7 uniform window, the sample covariance
  // (49 / 48), K1 = 0.01, K2 = 0.03, averaged over the windows that lie wholly inside
  // the frame (scikit-image crops the border's) and over the channels. Written here
  // because the page has no build step to bring a library in; tests/service/test_web.py
  // checks it against scikit-image on the same PNGs.
  const WIN = 7;
  const C1 = 0.01 ** 2;
  const C2 = 0.03 ** 2;

  function ssim(a, b) {
    const { width, height } = a;
    if (width < WIN || height < WIN) return null;
    const n = WIN * WIN;
    const covNorm = n / (n - 1);
    let total = 0;
    let count = 0;
    for (let c = 0; c < 3; c++) {
      for (let y = 0; y + WIN <= height; y++) {
        for (let x = 0; x + WIN <= width; x++) {
          let sa = 0, sb = 0, saa = 0, sbb = 0, sab = 0;
          for (let dy = 0; dy < WIN; dy++) {
            let i = ((y + dy) * width + x) * 3 + c;
            for (let dx = 0; dx < WIN; dx++, i += 3) {
              const va = a.rgb[i];
              const vb = b.rgb[i];
              sa += va;
              sb += vb;
              saa += va * va;
              sbb += vb * vb;
              sab += va * vb;
            }
          }
          const ua = sa / n, ub = sb / n;
          const va = covNorm * (saa / n - ua * ua);
          const vb = covNorm * (sbb / n - ub * ub);
          const vab = covNorm * (sab / n - ua * ub);
          total += ((2 * ua * ub + C1) * (2 * vab + C2)) / ((ua * ua + ub * ub + C1) * (va + vb + C2));
          count++;
        }
      }
    }
    return total / count;
  }

  const size = (f) => `${f.width}x${f.height}`;

  /**
   * Per predicted step with a true frame: {step, mse, copyLast, ratio, ssim,
   * copyLastSsim} (SSIM null for frames under 7x7). Throws an Error
   * that says why when the frames cannot be compared.
   */
  async function stepScores(inputs, truth, predicted) {
    const steps = Math.min(truth.length, predicted.length);
    const [last, ...pairs] = await Promise.all([
      decodeFrame(inputs[inputs.length - 1].src),
      ...truth.slice(0, steps).map((f) => decodeFrame(f.src)),
      ...predicted.slice(0, steps).map((f) => decodeFrame(f.src)),
    ]);
    const rows = [];
    for (let k = 0; k < steps; k++) {
      const t = pairs[k];
      const p = pairs[steps + k];
      if (size(t) !== size(p) || size(t) !== size(last)) {
        throw new Error(
          `the true frame ${k + 1} is ${size(t)}, the prediction ${size(p)} and the last ` +
            `input ${size(last)}: they cannot be compared pixel by pixel`,
        );
      }
      const model = mse(p, t);
      const copyLast = mse(last, t);
      rows.push({
        step: k + 1,
        mse: model,
        copyLast,
        ratio: copyLast > 0 ? model / copyLast : null,
        ssim: ssim(p, t),
        copyLastSsim: ssim(last, t),
      });
    }
    return rows;
  }

  const fixed = (x, digits) => (x === null || x === undefined ? "\u2014" : x.toFixed(digits));
  const precise = (x) => x.toPrecision(3);

  function cell(tag, text, className) {
    const td = document.createElement(tag);
    td.textContent = text;
    if (className) td.className = className;
    return td;
  }

  /**
   * Fill the table body with the live rows; `setSteps` (the set's fed-back figures per
   * step, or null) goes in the last column.
   */
  function renderRows(body, rows, firstStep, setSteps) {
    body.replaceChildren(
      ...rows.map((row) => {
        const tr = document.createElement("tr");
        const set = setSteps && row.step <= setSteps.length ? setSteps[row.step - 1] : null;
        tr.append(
          cell("th", `t=${firstStep + row.step - 1}`),
          cell("td", precise(row.mse), "mse"),
          cell("td", precise(row.copyLast), "copy-last"),
          cell("td", `${fixed(row.ratio, 2)}\u00d7`, "ratio"),
          cell("td", fixed(row.ssim, 3), "ssim"),
          cell("td", fixed(row.copyLastSsim, 3), "copy-last-ssim"),
          cell("td", set === null ? "\u2014" : `${set.toFixed(2)}\u00d7`, "set-ratio"),
        );
        return tr;
      }),
    );
  }

  /** The committed model's figures on one set, in words. */
  function describeSet(committed, setName, setLabel) {
    const f = committed.figures[setName];
    if (!f) return null;
    const steps = f.fed_back_mse_vs_copy_last.map((r, i) => `${i + 1}: ${r.toFixed(2)}\u00d7`);
    return (
      `${setLabel}, ${f.sequences} sequences: next frame ${f.mse_vs_copy_last.toFixed(2)}\u00d7 ` +
      `copy-last, SSIM ${f.ssim.toFixed(3)} (copying the last frame: ` +
      `${f.copy_last_ssim.toFixed(3)}); fed back (${f.fed_back}), step ${steps.join(", ")}.`
    );
  }

  return { decodeFrame, ssim, stepScores, renderRows, describeSet };
})();
