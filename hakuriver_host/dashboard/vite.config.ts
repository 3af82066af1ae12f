import { defineConfig } from "vite";
import vue from "@vitejs/plugin-vue";

// The Host serves dist/ with a Content-Security-Policy that forbids inline scripts and
// styles: no inlined module preload polyfill, and CSS always in files.
export default defineConfig({
  plugins: [vue()],
  build: {
    outDir: "dist",
    emptyOutDir: true,
    modulePreload: { polyfill: false },
    assetsInlineLimit: 0,
    cssCodeSplit: true,
    sourcemap: false,
    target: "es2022",
    chunkSizeWarningLimit: 400,
  },
});
