// A small terminal renderer for the Hearth dashboard: a grid of characters
// with a cursor, fed the bytes a shell writes to its PTY. It knows printable
// text, CR/LF, backspace, tab, the erase and cursor-movement CSI sequences
// bash, readline and the common tools use, and skips what it does not draw
// (SGR colours, OSC titles, character sets, modes).
"use strict";

(function () {
  const HISTORY = 1000;

  class HearthTerminal {
    constructor(screen, cols, rows) {
      this.screen = screen;
      this.decoder = new TextDecoder("utf-8");
      this.history = [];
      this.resize(cols, rows);
      this.reset();
    }

    reset() {
      this.lines = [];
      for (let y = 0; y < this.rows; y++) this.lines.push(this.blank());
      this.x = 0;
      this.y = 0;
      this.saved = [0, 0];
      this.state = "text";
      this.params = "";
      this.scheduleRender();
    }

    blank() {
      return new Array(this.cols).fill(" ");
    }

    resize(cols, rows) {
      const old = this.lines;
      this.cols = cols;
      this.rows = rows;
      if (!old) return;
      const lines = old.map((line) => {
        const out = line.slice(0, cols);
        while (out.length < cols) out.push(" ");
        return out;
      });
      while (lines.length > rows) {
        this.pushHistory(lines.shift());
        this.y = Math.max(0, this.y - 1);
      }
      while (lines.length < rows) lines.push(this.blank());
      this.lines = lines;
      this.x = Math.min(this.x, cols - 1);
      this.y = Math.min(this.y, rows - 1);
      this.scheduleRender();
    }

    // Bytes (an ArrayBuffer or Uint8Array) from the PTY.
    write(bytes) {
      const text = this.decoder.decode(bytes, { stream: true });
      for (const ch of text) this.feed(ch);
      this.scheduleRender();
    }

    feed(ch) {
      switch (this.state) {
        case "text":
          return this.printable(ch);
        case "esc":
          return this.escape(ch);
        case "csi":
          if (ch >= "@" && ch <= "~") {
            this.state = "text";
            this.csi(this.params, ch);
          } else {
            this.params += ch;
          }
          return;
        case "osc":
          // Ends with BEL or ESC \ (the backslash is dropped as it comes).
          if (ch === "\x07") this.state = "text";
          else if (ch === "\x1b") this.state = "esc";
          return;
        case "charset":
          this.state = "text";
          return;
      }
    }

    printable(ch) {
      switch (ch) {
        case "\x1b":
          this.state = "esc";
          return;
        case "\r":
          this.x = 0;
          return;
        case "\n":
        case "\x0b":
        case "\x0c":
          this.lineFeed();
          return;
        case "\b":
          if (this.x > 0) this.x--;
          return;
        case "\t":
          this.x = Math.min(this.cols - 1, (Math.floor(this.x / 8) + 1) * 8);
          return;
        case "\x07":
        case "\x00":
        case "\x0e":
        case "\x0f":
          return;
      }
      if (ch < " " || ch === "\x7f") return;
      if (this.x >= this.cols) {
        this.x = 0;
        this.lineFeed();
      }
      this.lines[this.y][this.x] = ch;
      this.x++;
    }

    escape(ch) {
      this.state = "text";
      switch (ch) {
        case "[":
          this.state = "csi";
          this.params = "";
          return;
        case "]":
          this.state = "osc";
          return;
        case "(":
        case ")":
        case "*":
        case "+":
          this.state = "charset";
          return;
        case "7":
          this.saved = [this.x, this.y];
          return;
        case "8":
          [this.x, this.y] = this.saved;
          return;
        case "D":
          this.lineFeed();
          return;
        case "E":
          this.x = 0;
          this.lineFeed();
          return;
        case "M":
          if (this.y > 0) this.y--;
          else this.scrollDown(1);
          return;
        case "c":
          this.reset();
          return;
      }
      // ESC \ (end of a string), ESC = and ESC > (keypad modes): nothing.
    }

    csi(params, final) {
      const privateMode = params.startsWith("?");
      const nums = params.replace(/^[?>=]/, "").split(";").map((p) => parseInt(p, 10));
      const n = (i, dflt) => (Number.isFinite(nums[i]) && nums[i] > 0 ? nums[i] : dflt);
      const line = this.lines[this.y];
      switch (final) {
        case "A":
          this.y = Math.max(0, this.y - n(0, 1));
          break;
        case "B":
        case "e":
          this.y = Math.min(this.rows - 1, this.y + n(0, 1));
          break;
        case "C":
        case "a":
          this.x = Math.min(this.cols - 1, this.x + n(0, 1));
          break;
        case "D":
          this.x = Math.max(0, Math.min(this.x, this.cols - 1) - n(0, 1));
          break;
        case "E":
          this.x = 0;
          this.y = Math.min(this.rows - 1, this.y + n(0, 1));
          break;
        case "F":
          this.x = 0;
          this.y = Math.max(0, this.y - n(0, 1));
          break;
        case "G":
        case "`":
          this.x = Math.min(this.cols - 1, n(0, 1) - 1);
          break;
        case "d":
          this.y = Math.min(this.rows - 1, n(0, 1) - 1);
          break;
        case "H":
        case "f":
          this.y = Math.min(this.rows - 1, n(0, 1) - 1);
          this.x = Math.min(this.cols - 1, n(1, 1) - 1);
          break;
        case "J":
          this.eraseDisplay(nums[0] || 0);
          break;
        case "K":
          this.eraseLine(nums[0] || 0);
          break;
        case "X": {
          const end = Math.min(this.cols, this.x + n(0, 1));
          for (let i = this.x; i < end; i++) line[i] = " ";
          break;
        }
        case "P": {
          const count = Math.min(n(0, 1), this.cols - this.x);
          line.splice(this.x, count);
          for (let i = 0; i < count; i++) line.push(" ");
          break;
        }
        case "@": {
          const count = Math.min(n(0, 1), this.cols - this.x);
          for (let i = 0; i < count; i++) line.splice(this.x, 0, " ");
          line.length = this.cols;
          break;
        }
        case "L":
          for (let i = 0; i < n(0, 1); i++) {
            this.lines.splice(this.y, 0, this.blank());
            this.lines.pop();
          }
          break;
        case "M":
          for (let i = 0; i < n(0, 1); i++) {
            this.lines.splice(this.y, 1);
            this.lines.push(this.blank());
          }
          break;
        case "S":
          for (let i = 0; i < n(0, 1); i++) this.scrollUp();
          break;
        case "T":
          this.scrollDown(n(0, 1));
          break;
        case "s":
          this.saved = [this.x, this.y];
          break;
        case "u":
          [this.x, this.y] = this.saved;
          break;
        case "h":
        case "l":
          // The alternate screen (full-screen programs): start clean.
          if (privateMode && [47, 1047, 1049].includes(nums[0])) {
            this.eraseDisplay(2);
            this.x = 0;
            this.y = 0;
          }
          break;
        // m (colours), r (scroll region), n (reports), t, q: not drawn.
      }
    }

    eraseDisplay(mode) {
      if (mode === 0) {
        this.eraseLine(0);
        for (let y = this.y + 1; y < this.rows; y++) this.lines[y] = this.blank();
      } else if (mode === 1) {
        this.eraseLine(1);
        for (let y = 0; y < this.y; y++) this.lines[y] = this.blank();
      } else {
        for (let y = 0; y < this.rows; y++) this.lines[y] = this.blank();
        if (mode === 3) this.history = [];
      }
    }

    eraseLine(mode) {
      const line = this.lines[this.y];
      const [from, to] =
        mode === 0 ? [this.x, this.cols] : mode === 1 ? [0, this.x + 1] : [0, this.cols];
      for (let i = from; i < Math.min(to, this.cols); i++) line[i] = " ";
    }

    lineFeed() {
      if (this.y === this.rows - 1) this.scrollUp();
      else this.y++;
    }

    scrollUp() {
      this.pushHistory(this.lines.shift());
      this.lines.push(this.blank());
    }

    scrollDown(count) {
      for (let i = 0; i < count; i++) {
        this.lines.pop();
        this.lines.unshift(this.blank());
      }
    }

    pushHistory(line) {
      this.history.push(line.join("").trimEnd());
      if (this.history.length > HISTORY) this.history.shift();
    }

    // The screen's text: lines trimmed at the right, blank ones at the end
    // left out.
    screenText() {
      return this.lines
        .map((l) => l.join("").trimEnd())
        .join("\n")
        .replace(/\n+$/, "");
    }

    scheduleRender() {
      if (this.pending || !this.screen) return;
      this.pending = true;
      requestAnimationFrame(() => {
        this.pending = false;
        this.render();
      });
    }

    render() {
      const frag = document.createDocumentFragment();
      const before = this.history.concat(this.lines.slice(0, this.y).map((l) => l.join("").trimEnd()));
      if (before.length) frag.appendChild(document.createTextNode(before.join("\n") + "\n"));
      const line = this.lines[this.y];
      const x = Math.min(this.x, this.cols - 1);
      frag.appendChild(document.createTextNode(line.slice(0, x).join("")));
      const cursor = document.createElement("span");
      cursor.className = "cursor";
      cursor.textContent = line[x];
      frag.appendChild(cursor);
      frag.appendChild(document.createTextNode(line.slice(x + 1).join("").trimEnd()));
      const after = this.lines.slice(this.y + 1).map((l) => l.join("").trimEnd());
      if (after.length) frag.appendChild(document.createTextNode("\n" + after.join("\n")));
      this.screen.replaceChildren(frag);
      const box = this.screen.parentElement;
      if (box) box.scrollTop = box.scrollHeight;
    }
  }

  // The bytes a key press sends to the shell, or null for none.
  HearthTerminal.keyBytes = function (e) {
    const named = {
      Enter: "\r",
      Backspace: "\x7f",
      Tab: "\t",
      Escape: "\x1b",
      ArrowUp: "\x1b[A",
      ArrowDown: "\x1b[B",
      ArrowRight: "\x1b[C",
      ArrowLeft: "\x1b[D",
      Home: "\x1b[H",
      End: "\x1b[F",
      Delete: "\x1b[3~",
      PageUp: "\x1b[5~",
      PageDown: "\x1b[6~",
    };
    if (e.metaKey) return null;
    if (named[e.key]) return named[e.key];
    if (e.ctrlKey && e.key.length === 1) {
      const c = e.key.toUpperCase().charCodeAt(0);
      if (c >= 64 && c <= 95) return String.fromCharCode(c - 64);
      return null;
    }
    if (e.key.length === 1 || [...e.key].length === 1) {
      return (e.altKey ? "\x1b" : "") + e.key;
    }
    return null;
  };

  window.HearthTerminal = HearthTerminal;
})();
