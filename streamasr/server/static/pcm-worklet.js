// AudioWorklet processor: mono Float32 render quanta -> little-endian 16-bit PCM, posted to the
// page in ~50 ms frames at the AudioContext's own rate (the daemon resamples to 16 kHz).
class PcmS16Processor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.frameSamples = Math.round(sampleRate / 20); // 50 ms per WebSocket frame
    this.buffer = new Int16Array(this.frameSamples);
    this.filled = 0;
    this.port.onmessage = (event) => {
      if (event.data === "flush") this.flush();
    };
  }

  flush() {
    if (this.filled === 0) return;
    const out = this.buffer.slice(0, this.filled);
    this.port.postMessage(out.buffer, [out.buffer]);
    this.filled = 0;
  }

  process(inputs) {
    const input = inputs[0];
    if (input && input.length > 0) {
      const channels = input.length;
      const n = input[0].length;
      for (let i = 0; i < n; i++) {
        let x = 0;
        for (let c = 0; c < channels; c++) x += input[c][i];
        x /= channels; // downmix to mono
        x = x < -1 ? -1 : x > 1 ? 1 : x;
        this.buffer[this.filled++] = Math.round(x * 32767);
        if (this.filled === this.frameSamples) this.flush();
      }
    }
    return true; // keep running until the node is disconnected
  }
}

registerProcessor("pcm-s16", PcmS16Processor);
