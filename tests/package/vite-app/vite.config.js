// The dev server pre-bundles dependencies, which would separate the package from its
// .wasm file: exclude it (as the package README says). `vite build` needs nothing.
export default {
  optimizeDeps: { exclude: ["warren"] },
  base: "./",
  build: { target: "es2022" },
};
