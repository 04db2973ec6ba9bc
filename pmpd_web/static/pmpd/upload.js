/* PMPD image uploader: files, a chosen folder or a dropped folder, sent in resumable chunks
   through the image-upload API (pmpd_web/imaging/api.py). Plain JavaScript, no dependency.

   Flow: create the upload, declare its files (relative path and size), PUT each file's chunks
   from the bytes the server already has, then finish to queue the ingest. An interrupted upload
   is remembered in localStorage: choosing the same files again resumes where the server stopped
   (declaring a file again returns its received bytes). */
(function () {
  "use strict";

  var CHUNK = 8 * 1024 * 1024;
  var PARALLEL = 3;
  var DECLARE_BATCH = 500;
  var RETRIES = 6;
  var CLUTTER = /(^|\/)(\.DS_Store|Thumbs\.db|desktop\.ini)$|(^|\/)__MACOSX\//i;

  function formatBytes(n) {
    var units = ["bytes", "KB", "MB", "GB", "TB"];
    var i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
    return (i ? n.toFixed(1) : n) + " " + units[i];
  }

  function sleep(ms) { return new Promise(function (resolve) { setTimeout(resolve, ms); }); }

  function FatalError(message) { this.message = message; }

  function init(root) {
    function el(role) { return root.querySelector('[data-role="' + role + '"]'); }
    var chunk = parseInt(root.dataset.chunkBytes, 10) || CHUNK;
    var uploadsUrl = root.dataset.uploadsUrl;
    var storageKey = root.dataset.storageKey;
    var studyId = root.dataset.studyId;
    var entries = [];
    var resumable = null;
    var busy = false;
    // Set when an upload stops on an error: the other files stop too, and the progress
    // display (drawn on the next animation frame) no longer overwrites the reason.
    var stopped = false;
    var frame = 0;

    function request(method, url, body, headers) {
      var options = {
        method: method,
        credentials: "same-origin",
        headers: Object.assign({ "X-CSRFToken": root.dataset.csrf, Accept: "application/json" }, headers || {})
      };
      if (body !== undefined) {
        if (body instanceof Blob) {
          options.body = body;
        } else {
          options.body = JSON.stringify(body);
          options.headers["Content-Type"] = "application/json";
        }
      }
      return fetch(url, options).then(function (response) {
        return response.text().then(function (text) {
          var data = {};
          try { data = text ? JSON.parse(text) : {}; } catch (e) { data = { detail: text.slice(0, 200) }; }
          return { status: response.status, ok: response.ok, data: data };
        });
      });
    }

    function message(data) {
      if (!data) { return "no answer"; }
      if (data.detail) { return data.detail; }
      return Object.keys(data).map(function (k) { return k + ": " + data[k]; }).join("; ");
    }

    function render() {
      var rows = el("file-rows");
      rows.textContent = "";
      entries.forEach(function (entry) {
        var row = document.createElement("tr");
        var name = document.createElement("td");
        name.textContent = entry.path;
        var size = document.createElement("td");
        size.className = "num";
        size.textContent = formatBytes(entry.file.size);
        var barCell = document.createElement("td");
        barCell.className = "bar-cell";
        barCell.innerHTML = '<div class="bar"><span style="width: 0%"></span></div>';
        var state = document.createElement("td");
        state.textContent = "waiting";
        row.append(name, size, barCell, state);
        rows.appendChild(row);
        entry.bar = barCell.querySelector("span");
        entry.state = state;
      });
      el("start").disabled = busy || entries.length === 0;
      el("overall-text").textContent = entries.length + " file(s), " +
        formatBytes(entries.reduce(function (sum, e) { return sum + e.file.size; }, 0)) + " chosen.";
    }

    function progress() {
      if (frame) { return; }
      frame = requestAnimationFrame(function () {
        frame = 0;
        var total = 0;
        var sent = 0;
        entries.forEach(function (entry) {
          total += entry.file.size;
          sent += entry.sent || 0;
          var share = entry.file.size ? (100 * (entry.sent || 0)) / entry.file.size : (entry.done ? 100 : 0);
          entry.bar.style.width = share.toFixed(1) + "%";
        });
        var percent = total ? (100 * sent) / total : 100;
        var bar = el("overall-bar");
        bar.setAttribute("aria-valuenow", percent.toFixed(0));
        bar.querySelector("span").style.width = percent.toFixed(1) + "%";
        if (!stopped) {
          el("overall-text").textContent = formatBytes(sent) + " of " + formatBytes(total) + " sent (" + percent.toFixed(1) + "%).";
        }
      });
    }

    function add(list) {
      list.forEach(function (item) {
        if (!CLUTTER.test(item.path)) {
          entries.push({ file: item.file, path: item.path.replace(/^\/+/, "") });
        }
      });
      render();
    }

    function readAll(reader) {
      return new Promise(function (resolve, reject) {
        var all = [];
        (function next() {
          reader.readEntries(function (batch) {
            if (!batch.length) { resolve(all); return; }
            all = all.concat(batch);
            next();
          }, reject);
        })();
      });
    }

    function walk(entry) {
      if (entry.isFile) {
        return new Promise(function (resolve, reject) {
          entry.file(function (file) { resolve([{ file: file, path: entry.fullPath }]); }, reject);
        });
      }
      return readAll(entry.createReader()).then(function (children) {
        return Promise.all(children.map(walk)).then(function (lists) { return [].concat.apply([], lists); });
      });
    }

    el("files").addEventListener("change", function (event) {
      add(Array.prototype.map.call(event.target.files, function (f) { return { file: f, path: f.name }; }));
      event.target.value = "";
    });
    el("folder").addEventListener("change", function (event) {
      add(Array.prototype.map.call(event.target.files, function (f) {
        return { file: f, path: f.webkitRelativePath || f.name };
      }));
      event.target.value = "";
    });

    var zone = root.querySelector(".drop-zone");
    zone.addEventListener("click", function () { el("files").click(); });
    zone.addEventListener("keydown", function (event) {
      if (event.key === "Enter" || event.key === " ") { event.preventDefault(); el("files").click(); }
    });
    zone.addEventListener("dragover", function (event) { event.preventDefault(); zone.classList.add("over"); });
    zone.addEventListener("dragleave", function () { zone.classList.remove("over"); });
    zone.addEventListener("drop", function (event) {
      event.preventDefault();
      zone.classList.remove("over");
      var items = Array.prototype.slice.call(event.dataTransfer.items || []);
      var roots = items.map(function (item) { return item.webkitGetAsEntry && item.webkitGetAsEntry(); })
        .filter(Boolean);
      if (!roots.length) {
        add(Array.prototype.map.call(event.dataTransfer.files, function (f) { return { file: f, path: f.name }; }));
        return;
      }
      Promise.all(roots.map(walk)).then(function (lists) { add([].concat.apply([], lists)); });
    });

    function sendFile(upload, entry) {
      var url = uploadsUrl + upload.id + "/files/" + entry.id + "/content/";
      var offset = entry.received;
      entry.sent = offset;
      var failures = 0;
      function step() {
        if (stopped) {
          entry.state.textContent = entry.done ? "received" : "paused";
          return Promise.resolve();
        }
        if (offset >= entry.file.size) {
          entry.done = true;
          entry.state.textContent = "received";
          progress();
          return Promise.resolve();
        }
        var end = Math.min(offset + chunk, entry.file.size);
        entry.state.textContent = "sending";
        return request("PUT", url, entry.file.slice(offset, end), {
          "Content-Type": "application/octet-stream",
          "Content-Range": "bytes " + offset + "-" + (end - 1) + "/" + entry.file.size
        }).then(function (answer) {
          if (answer.ok || answer.status === 409) {
            failures = 0;
            offset = answer.data.received_bytes;
            entry.sent = offset;
            progress();
            return step();
          }
          if (answer.status >= 400 && answer.status < 500) {
            throw new FatalError(entry.path + ": " + message(answer.data));
          }
          throw new Error(message(answer.data));
        }).catch(function (error) {
          if (error instanceof FatalError || failures >= RETRIES) {
            entry.state.textContent = "failed";
            throw error instanceof FatalError ? error : new FatalError(entry.path + ": " + error.message);
          }
          failures += 1;
          entry.state.textContent = "retrying";
          return sleep(1000 * Math.pow(2, failures - 1)).then(step);
        });
      }
      return step();
    }

    function declare(upload) {
      var batches = [];
      for (var i = 0; i < entries.length; i += DECLARE_BATCH) {
        batches.push(entries.slice(i, i + DECLARE_BATCH));
      }
      return batches.reduce(function (chain, batch) {
        return chain.then(function () {
          return request("POST", uploadsUrl + upload.id + "/files/", {
            files: batch.map(function (e) { return { name: e.path, size: e.file.size }; })
          }).then(function (answer) {
            if (!answer.ok) { throw new FatalError(message(answer.data)); }
            answer.data.forEach(function (declared, index) {
              batch[index].id = declared.id;
              batch[index].received = declared.received_bytes;
            });
          });
        });
      }, Promise.resolve());
    }

    function start() {
      busy = true;
      stopped = false;
      el("start").disabled = true;
      el("resume").hidden = true;
      var created = resumable ? Promise.resolve(resumable) : request("POST", uploadsUrl, {
        label_pancreas: parseInt(el("label-pancreas").value, 10),
        label_tumour: parseInt(el("label-tumour").value, 10),
        confirm_shared_source: el("confirm-shared-source").checked,
        study_id: studyId || undefined
      }).then(function (answer) {
        if (!answer.ok) { throw new FatalError(message(answer.data)); }
        return answer.data;
      });
      var upload;
      created.then(function (value) {
        upload = value;
        localStorage.setItem(storageKey, String(upload.id));
        el("overall-text").textContent = "Declaring " + entries.length + " file(s) to upload #" + upload.id + "...";
        return declare(upload);
      }).then(function () {
        var queue = entries.slice();
        function worker() {
          var entry = stopped ? null : queue.shift();
          return entry ? sendFile(upload, entry).then(worker) : Promise.resolve();
        }
        var workers = [];
        for (var i = 0; i < PARALLEL; i += 1) { workers.push(worker()); }
        return Promise.all(workers);
      }).then(function () {
        el("overall-text").textContent = "All files received; queueing the ingest...";
        return request("POST", uploadsUrl + upload.id + "/finish/");
      }).then(function (answer) {
        if (!answer.ok) { throw new FatalError(message(answer.data)); }
        localStorage.removeItem(storageKey);
        window.location.href = root.dataset.detailUrl.replace(/\/0\/$/, "/" + upload.id + "/");
      }).catch(function (error) {
        stopped = true;
        busy = false;
        el("start").disabled = false;
        var text = error && error.message ? error.message : String(error);
        el("overall-text").textContent = "Stopped: " + text.replace(/\.?$/, ".") +
          " Press Upload to try again: what was received is kept.";
        if (upload) { resumable = upload; }
      });
    }

    el("start").addEventListener("click", start);

    var saved = localStorage.getItem(storageKey);
    if (saved) {
      request("GET", uploadsUrl + saved + "/").then(function (answer) {
        if (answer.ok && answer.data.status === "receiving") {
          resumable = answer.data;
          var note = el("resume");
          note.hidden = false;
          note.textContent = "Upload #" + answer.data.id + " was interrupted: " + formatBytes(answer.data.received_bytes) +
            " of " + formatBytes(answer.data.size_bytes) + " received in " + answer.data.n_files +
            " file(s). Choose the same files or folder again and press Upload to resume.";
        } else {
          localStorage.removeItem(storageKey);
        }
      });
    }
  }

  document.addEventListener("DOMContentLoaded", function () {
    Array.prototype.forEach.call(document.querySelectorAll(".uploader"), init);
  });
})();
