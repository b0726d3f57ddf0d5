// A member's photo at the desk: the browser's camera where it has one and allows it (a frame
// drawn to a canvas and sent as a JPEG), or a picture file. Either is posted as the image's
// bytes with the page's CSRF token in a header; the server re-encodes it without metadata.
// Served by gated itself; no other script is loaded.
"use strict";
(function () {
  const box = document.getElementById("photo-take");
  if (!box) return;
  const url = box.dataset.url;
  const csrf = box.dataset.csrf;
  const video = document.getElementById("photo-video");
  const cameraButton = document.getElementById("photo-camera");
  const snapButton = document.getElementById("photo-snap");
  const file = document.getElementById("photo-file");
  const state = document.getElementById("photo-state");
  let stream = null;

  function say(text) { state.textContent = text; }

  async function send(blob, type) {
    say("Saving the photo…");
    let answer;
    try {
      const response = await fetch(url, {
        method: "POST",
        headers: { "Content-Type": type, "X-CSRF-Token": csrf },
        body: blob,
        credentials: "same-origin",
      });
      answer = await response.json().catch(() => ({}));
      if (!response.ok) { say("Not saved: " + (answer.error || response.status)); return; }
    } catch (e) {
      say("Not saved: the server could not be reached.");
      return;
    }
    stop();
    // The page shows the new photo (never from a cache: the server says no-store).
    window.location.reload();
  }

  function stop() {
    if (stream) stream.getTracks().forEach((t) => t.stop());
    stream = null;
    video.hidden = true;
    snapButton.hidden = true;
  }

  if (navigator.mediaDevices && navigator.mediaDevices.getUserMedia) {
    cameraButton.hidden = false;
    cameraButton.addEventListener("click", async () => {
      try {
        stream = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 } });
      } catch (e) {
        say("The camera is not available here (" + e.name + "): choose a picture instead.");
        return;
      }
      video.srcObject = stream;
      video.hidden = false;
      snapButton.hidden = false;
      say("Camera on: take the photo when ready.");
    });
    snapButton.addEventListener("click", () => {
      const canvas = document.createElement("canvas");
      canvas.width = video.videoWidth || 640;
      canvas.height = video.videoHeight || 480;
      canvas.getContext("2d").drawImage(video, 0, 0, canvas.width, canvas.height);
      canvas.toBlob((blob) => { if (blob) send(blob, "image/jpeg"); }, "image/jpeg", 0.9);
    });
  }

  file.addEventListener("change", () => {
    const picked = file.files && file.files[0];
    if (picked) send(picked, picked.type || "application/octet-stream");
  });
})();
