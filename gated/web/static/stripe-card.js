// Card entry and bank confirmation (3-D Secure) through Stripe.js: the card goes to Stripe in a
// SetupIntent, never to us; the form then carries only the SetupIntent's id. Without this
// script nothing is submitted half-done: the forms need its fields.
"use strict";
(function () {
  const cardForm = document.querySelector("form[data-client-secret]");
  if (cardForm) {
    const stripe = Stripe(cardForm.dataset.stripeKey);
    const card = stripe.elements().create("card");
    card.mount("#card-element");
    const error = document.getElementById("card-error");
    const button = cardForm.querySelector("button[type=submit]");
    cardForm.addEventListener("submit", async (event) => {
      event.preventDefault();
      if (button.disabled) return;  // a double click saves and charges once
      button.disabled = true;
      error.textContent = "";
      const result = await stripe.confirmCardSetup(cardForm.dataset.clientSecret, {
        payment_method: { card: card },
      });
      if (result.error) {
        error.textContent = (result.error.message || "Your card was not accepted.") + " Nothing was charged.";
        button.disabled = false;
        return;
      }
      cardForm.elements.setup_id.value = result.setupIntent.id;
      cardForm.submit();
    });
  }
  // SEPA Direct Debit: the IBAN goes to Stripe in a SetupIntent of type sepa_debit, with the
  // account holder's name and e-mail address (the mandate needs them); we get its id.
  const sepaForm = document.getElementById("sepa-form");
  if (sepaForm) {
    const stripe = Stripe(sepaForm.dataset.stripeKey);
    const error = document.getElementById("sepa-error");
    const button = sepaForm.querySelector("button[type=submit]");
    sepaForm.addEventListener("submit", async (event) => {
      event.preventDefault();
      if (button.disabled) return;
      button.disabled = true;
      error.textContent = "";
      const result = await stripe.confirmSepaDebitSetup(sepaForm.dataset.sepaSecret, {
        payment_method: {
          sepa_debit: { iban: document.getElementById("iban").value },
          billing_details: { name: sepaForm.dataset.holder, email: sepaForm.dataset.email },
        },
      });
      if (result.error) {
        error.textContent = (result.error.message || "Your bank account was not accepted.") + " Nothing was charged.";
        button.disabled = false;
        return;
      }
      sepaForm.elements.setup_id.value = result.setupIntent.id;
      sepaForm.submit();
    });
  }
  const confirmForm = document.querySelector("form[data-confirm-secret]");
  if (confirmForm) {
    const stripe = Stripe(confirmForm.dataset.stripeKey);
    stripe.confirmCardPayment(confirmForm.dataset.confirmSecret).then((result) => {
      if (result.error) {
        document.getElementById("card-error").textContent = result.error.message || "Not confirmed.";
      }
      confirmForm.submit();  // the server looks up what became of the payment either way
    });
  }
})();
